// relibctl: command-line client of relibd. Exit codes: 0 ok, 1 the daemon
// reported an error, 2 usage, 3 daemon not reachable, 4 permission denied
// (client/commands.h).
#include <iostream>
#include <string>
#include <string_view>

#include "CLI/CLI.hpp"
#include "client/commands.h"
#include "common/message_limits.h"
#include "common/socket_path.h"

int main(int argc, char** argv) {
  using namespace relib::client;
  CLI::App app("relibctl: control relibd (live reload of native modules)");
  app.require_subcommand(1);
  ClientOptions options;
  options.socket = relib::common::DefaultSocketPath();
  app.add_option("--socket", options.socket, "relibd's Unix socket")->capture_default_str();
  app.add_flag("--json", options.json, "print results as JSON");
  app.add_option("--connect-timeout-ms", options.connect_timeout_ms, "how long to wait for relibd");
  app.add_option("--timeout", options.timeout_s,
                 "deadline in seconds of every request (for events: how long to follow); 0 = none")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-message-mb", options.max_message_mb,
                 "largest message sent or received (a call's input or output); match relibd's --max-message-mb")
      ->capture_default_str()
      ->check(CLI::Range(1, relib::common::kMaxMaxMessageMb));

  std::string name, path, export_name, input;
  bool force = false;
  int count = 0;
  int exit_code = kExitOk;

  ModuleFlags flags;
  auto add_module_flags = [&](CLI::App* sub) {
    sub->add_option("--thread-grace-ms", flags.thread_grace_ms,
                    "how long unload waits for the module's threads to exit (default 1000)");
    sub->add_option("--leak-policy", flags.leak_policy, "heap blocks left at unload: report or free")
        ->check(CLI::IsMember({"report", "free"}));
    sub->add_option("--fd-policy", flags.fd_policy, "fds left open at unload: report or close")
        ->check(CLI::IsMember({"report", "close"}));
    sub->add_option("--child-policy", flags.child_policy, "child processes left running at unload: report or kill")
        ->check(CLI::IsMember({"report", "kill"}));
    sub->add_option("--mapping-policy", flags.mapping_policy,
                    "mappings left at unload: report or unmap (views of module files are always unmapped)")
        ->check(CLI::IsMember({"report", "unmap"}));
    sub->add_option("--signal-policy", flags.signal_policy,
                    "a signal handler into the module set behind the agent's back: restore or refuse the unload")
        ->check(CLI::IsMember({"restore", "refuse"}));
    sub->add_option("--dlopen-policy", flags.dlopen_policy, "libraries the module dlopen'ed and kept: report or close")
        ->check(CLI::IsMember({"report", "close"}));
    sub->add_flag("--capture-sites", flags.capture_sites, "record allocation sites for leak reports");
    sub->add_option("--load-deadline-ms", flags.load_deadline_ms, "deadline of copy + dlopen (0: relibd's default)");
    sub->add_option("--on-load-deadline-ms", flags.on_load_deadline_ms, "deadline of on_load");
    sub->add_option("--call-deadline-ms", flags.call_deadline_ms, "deadline of one export call");
    sub->add_option("--before-unload-deadline-ms", flags.before_unload_deadline_ms, "deadline of before_unload");
    sub->add_option("--unload-deadline-ms", flags.unload_deadline_ms, "deadline of the unload checks");
    sub->add_option("--max-concurrent-calls", flags.max_concurrent_calls,
                    "calls of a thread-safe module running at once (0: 4; a serial module always runs 1)");
    sub->add_option("--max-queued-calls", flags.max_queued_calls,
                    "calls waiting beyond those; a full queue fails at once with RESOURCE_EXHAUSTED (0: 256)");
    sub->add_option("--queue-deadline-ms", flags.queue_deadline_ms,
                    "how long a call may wait in the queue (0: its call deadline)");
  };
  std::string worker;
  bool staged = false;

  auto* load = app.add_subcommand("load", "load a module under NAME from PATH");
  load->add_option("NAME", name)->required();
  load->add_option("PATH", path)->required();
  add_module_flags(load);
  load->add_option("--worker", worker, "isolation group: modules in different groups run in different workers");
  bool watch = false;
  load->add_flag("--watch", watch, "reload whenever a new build of PATH is complete (see relibctl watch)");
  load->callback([&] { exit_code = RunLoad(options, name, path, flags, worker, watch); });

  auto* reload = app.add_subcommand("reload", "replace NAME with a new build (from PATH or its current path)");
  bool all = false;
  reload->add_option("NAME", name, "module to reload (or --all)");
  reload->add_option("PATH", path);
  reload->add_flag("--all", all, "reload every module from its current path");
  reload->add_flag("--force", force, "unload even if before_unload fails");
  add_module_flags(reload);
  reload->add_flag("--staged", staged, "try the new version in a scratch worker (load + self_test) first");
  reload->callback([&] {
    for (const char* flag : {"--thread-grace-ms", "--leak-policy", "--fd-policy", "--mapping-policy", "--signal-policy",
                             "--dlopen-policy", "--capture-sites", "--child-policy",
                             "--load-deadline-ms", "--on-load-deadline-ms", "--call-deadline-ms",
                             "--before-unload-deadline-ms", "--unload-deadline-ms", "--max-concurrent-calls",
                             "--max-queued-calls", "--queue-deadline-ms"}) {
      flags.set = flags.set || reload->count(flag) > 0;
    }
    if (all && !name.empty()) throw CLI::ValidationError("reload", "--all takes no NAME or PATH");
    if (!all && name.empty()) throw CLI::RequiredError("NAME (or --all)");
    exit_code = all ? RunReloadAll(options, force, staged, flags) : RunReload(options, name, path, force, staged, flags);
  });

  auto* unload = app.add_subcommand("unload", "unload NAME and print the unload report");
  unload->add_option("NAME", name)->required();
  unload->add_flag("--force", force, "unload even if before_unload fails");
  unload->callback([&] { exit_code = RunUnload(options, name, force); });

  auto* call = app.add_subcommand("call", "call EXPORT of NAME with INPUT (- reads stdin)");
  call->add_option("NAME", name)->required();
  call->add_option("EXPORT", export_name)->required();
  call->add_option("INPUT", input);
  call->callback([&] { exit_code = RunCall(options, name, export_name, input); });

  auto* status = app.add_subcommand("status", "list modules and workers");
  status->callback([&] { exit_code = RunStatus(options); });

  auto* events = app.add_subcommand("events", "print lifecycle events as they happen");
  events->add_option("--count", count, "stop after this many events");
  events->callback([&] { exit_code = RunEvents(options, count); });

  auto* watch_command = app.add_subcommand(
      "watch", "reload NAME whenever a new build of its file is complete (closed after writing or renamed into place)");
  bool watch_off = false;
  watch_command->add_option("NAME", name)->required();
  watch_command->add_flag("--off", watch_off, "stop watching");
  watch_command->callback([&] { exit_code = RunWatch(options, name, watch_off); });

  auto* reload_config = app.add_subcommand(
      "reload-config", "make relibd read its config file (relibd --config) again and apply the difference");
  reload_config->callback([&] { exit_code = RunReloadConfig(options); });

  auto* version = app.add_subcommand("version", "print relibctl's, relibd's and the module ABI's versions");
  version->callback([&] { exit_code = RunVersion(options); });

  auto* help = app.add_subcommand("help", "print help for COMMAND (or for relibctl)");
  std::string help_topic;
  help->add_option("COMMAND", help_topic);
  help->callback([&] {
    if (help_topic.empty()) {
      // App::help() would show the selected subcommand ("help") instead.
      std::cout << app.get_formatter()->make_help(&app, app.get_name(), CLI::AppFormatMode::Normal);
      return;
    }
    CLI::App* topic = nullptr;
    try {
      topic = app.get_subcommand(help_topic);
    } catch (const CLI::OptionNotFound&) {
      throw CLI::ValidationError("help", "no command '" + help_topic + "'; see relibctl --help");
    }
    std::cout << topic->help();
  });

  // --json and --timeout are also accepted after the subcommand ("relibctl status --json").
  for (auto* sub : {load, reload, unload, call, status, events, version, watch_command, reload_config}) {
    sub->add_flag("--json", options.json, "print results as JSON");
    sub->add_option("--timeout", options.timeout_s, "deadline in seconds of every request")
        ->check(CLI::NonNegativeNumber);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    bool json = false;
    for (int i = 1; i < argc; ++i) json = json || std::string_view(argv[i]) == "--json";
    if (!json) return app.exit(e) == 0 ? kExitOk : kExitUsage;
    ClientOptions json_options;
    json_options.json = true;
    return PrintError(json_options, e.what(), "USAGE", kExitUsage);
  }
  return exit_code;
}
