// Names for code addresses in reports (allocation sites, thread routines).
#ifndef RELIB_AGENT_SYMBOLIZE_H_
#define RELIB_AGENT_SYMBOLIZE_H_

#include <cstdint>
#include <optional>
#include <string>

namespace relib::agent {

// Where an address lies: the loaded object and, if known, the symbol.
struct Symbol {
  std::string object;          // file name of the loaded object ("libfoo.so")
  uintptr_t object_offset = 0; // address - the object's load address
  std::string name;            // demangled symbol name; "" if none is known
  uintptr_t symbol_offset = 0; // address - the symbol's start
};

// The symbol containing `address`: from the dynamic symbol table (dladdr)
// or, for hidden symbols (a module's functions), from the object file's
// .symtab when it has one (read with pread in host scope; not mapped).
// nullopt if no loaded object contains `address`.
// REQUIRES: the object containing `address` is still mapped and its file
// still exists. Takes the dynamic loader's lock (dladdr): never call with a
// lock a loader callback may take.
std::optional<Symbol> LookupSymbol(const void* address);

// "demangled::symbol+0x1c (libfoo.so)" when a symbol is known (see
// LookupSymbol), "libfoo.so+0x1234" otherwise, "0x7f..." if no loaded object
// contains `address`. Same requirements as LookupSymbol.
std::string Symbolize(const void* address);

// The demangled form of a symbol or type name (as std::type_info::name()
// gives it); `mangled` itself if it does not demangle.
std::string Demangle(const char* mangled);

}  // namespace relib::agent

#endif  // RELIB_AGENT_SYMBOLIZE_H_
