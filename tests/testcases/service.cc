// Test module for relibd as a service (restart, graceful stop): keeps a value
// in the state store, reports what its on_load found, saves a checkpoint in
// before_unload, and can hang a call forever. Built as VERSION=1 and 2.
#include <unistd.h>

#include <string>
#include <string_view>

#include "relib/module.hpp"

#ifndef VERSION
#error "VERSION must be defined"
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

namespace {

relib::Host host{nullptr};
std::string value;
std::string checkpoint_at_load;

void OnLoad(relib::Host h) {
  host = h;
  value = host.LoadState("value").value_or("");
  checkpoint_at_load = host.LoadState("checkpoint").value_or("<none>");
}

void BeforeUnload() { host.SaveState("checkpoint", "before_unload of v" STR(VERSION) " at value=" + value); }

std::string Version(std::string_view) { return "v" STR(VERSION); }
std::string Set(std::string_view input) {
  value = std::string(input);
  if (!host.SaveState("value", value)) throw relib::Error("save_state refused");
  return value;
}
std::string Get(std::string_view) { return value; }
std::string Checkpoint(std::string_view) { return checkpoint_at_load; }
std::string Hang(std::string_view) {
  for (;;) ::pause();
}

}  // namespace

RELIB_MODULE("service", OnLoad, BeforeUnload, relib::Export<Version>("version"), relib::Export<Set>("set"),
             relib::Export<Get>("get"), relib::Export<Checkpoint>("checkpoint"), relib::Export<Hang>("hang"));
