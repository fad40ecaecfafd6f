# relib_add_module(NAME SOURCES... [OUTPUT_NAME name])
#
# Builds a relib module: a shared library whose only exported symbol is the
# descriptor. The flags matter for unloading:
#  - hidden visibility: nothing but the descriptor is interposable or exported;
#  - -fno-gnu-unique: g++ otherwise emits STB_GNU_UNIQUE symbols for inline
#    static members and template statics, and glibc never unmaps a library
#    that defines one.
# The SDK headers come from the relib::module target: the in-tree one while
# relibd itself is built, the installed one through find_package(relib).
function(relib_add_module name)
  cmake_parse_arguments(ARG "" "OUTPUT_NAME" "" ${ARGN})
  add_library(${name} MODULE ${ARG_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE relib::module)
  set_target_properties(${name} PROPERTIES
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    PREFIX "lib")
  if(ARG_OUTPUT_NAME)
    set_target_properties(${name} PROPERTIES OUTPUT_NAME ${ARG_OUTPUT_NAME})
  endif()
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fno-gnu-unique>)
  target_link_options(${name} PRIVATE -Wl,--no-undefined -Wl,-z,defs)
endfunction()
