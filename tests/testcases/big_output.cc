// Outputs and inputs of any size: `output` returns as many bytes as its input
// asks for (a decimal count), `input_size` returns the size of its input,
// `ping` answers "pong" (a cheap liveness check after a refused call).
#include <charconv>
#include <string>
#include <string_view>

#include "relib/module.hpp"

namespace {

std::string Output(std::string_view input) {
  size_t count = 0;
  auto [end, error] = std::from_chars(input.data(), input.data() + input.size(), count);
  if (error != std::errc() || end != input.data() + input.size()) throw relib::Error("input must be a byte count");
  return std::string(count, 'x');
}
std::string InputSize(std::string_view input) { return std::to_string(input.size()); }
std::string Ping(std::string_view) { return "pong"; }

}  // namespace

RELIB_MODULE("big_output", nullptr, nullptr, relib::Export<Output>("output"), relib::Export<InputSize>("input_size"),
             relib::Export<Ping>("ping"));
