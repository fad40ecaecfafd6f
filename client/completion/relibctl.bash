# bash completion for relibctl. Installed as
# share/bash-completion/completions/relibctl; to try it from a checkout:
#   source client/completion/relibctl.bash
# Module names come from the running relibd (`relibctl status --json`).

_relibctl_modules() {
  local socket_args=()
  local i
  for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
    if [[ ${COMP_WORDS[i]} == --socket ]]; then socket_args=(--socket "${COMP_WORDS[i + 1]}"); fi
  done
  relibctl "${socket_args[@]}" --timeout 1 status --json 2>/dev/null |
    grep -o '"name":"[^"]*"' | sed 's/^"name":"//; s/"$//' | sort -u
}

_relibctl() {
  local cur prev words cword
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD - 1]}
  local commands="load reload unload call status events watch reload-config version help"
  local global_opts="--socket --json --connect-timeout-ms --timeout --max-message-mb --help"
  local module_opts="--thread-grace-ms --leak-policy --fd-policy --child-policy --mapping-policy
    --signal-policy --dlopen-policy --capture-sites --load-deadline-ms --on-load-deadline-ms
    --call-deadline-ms --before-unload-deadline-ms --unload-deadline-ms"

  # The subcommand and how many positional words follow it so far.
  local command="" positional=0 i word
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    case $word in
      --socket|--connect-timeout-ms|--timeout|--max-message-mb|--worker|--count|--*-ms|--*-policy) ((i++)) ;;
      -*) ;;
      *) if [[ -z $command ]]; then command=$word; else ((positional++)); fi ;;
    esac
  done

  case $prev in
    --socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --leak-policy) COMPREPLY=($(compgen -W "report free" -- "$cur")); return ;;
    --fd-policy|--mapping-policy) COMPREPLY=($(compgen -W "report close unmap" -- "$cur")); return ;;
    --child-policy) COMPREPLY=($(compgen -W "report kill" -- "$cur")); return ;;
    --signal-policy) COMPREPLY=($(compgen -W "restore refuse" -- "$cur")); return ;;
    --dlopen-policy) COMPREPLY=($(compgen -W "report close" -- "$cur")); return ;;
    --connect-timeout-ms|--timeout|--max-message-mb|--count|--worker|--*-ms) return ;;
  esac

  if [[ -z $command ]]; then
    if [[ $cur == -* ]]; then
      COMPREPLY=($(compgen -W "$global_opts" -- "$cur"))
    else
      COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    fi
    return
  fi

  local opts=""
  case $command in
    load) opts="$module_opts --worker --watch --json --timeout" ;;
    watch) opts="--off --json --timeout" ;;
    reload) opts="$module_opts --force --staged --all --json --timeout" ;;
    unload) opts="--force --json --timeout" ;;
    call|status|version|reload-config) opts="--json --timeout" ;;
    events) opts="--count --json --timeout" ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    return
  fi
  case $command in
    load)
      if ((positional == 1)); then COMPREPLY=($(compgen -f -- "$cur")); fi ;;
    reload)
      if ((positional == 0)); then COMPREPLY=($(compgen -W "$(_relibctl_modules)" -- "$cur"))
      elif ((positional == 1)); then COMPREPLY=($(compgen -f -- "$cur")); fi ;;
    unload|call|watch)
      if ((positional == 0)); then COMPREPLY=($(compgen -W "$(_relibctl_modules)" -- "$cur")); fi ;;
    help)
      if ((positional == 0)); then COMPREPLY=($(compgen -W "$commands" -- "$cur")); fi ;;
  esac
}

complete -o filenames -o bashdefault -F _relibctl relibctl
