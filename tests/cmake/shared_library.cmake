# libkeel.so as the package ships it (script mode, run by ctest):
#   - its SONAME is libkeel.so.<SOVERSION>, with the SONAME link and the development link
#     (libkeel.so) next to it;
#   - it exports only the C ABI (keel_*) and the Rust half of the cxx bridge that
#     libkeel_cxx.a calls (keel$bridge$cxxbridge1$*, cxxbridge1$*): any other defined dynamic symbol
#     (wasmer's, Rust std's, the C++ shim's) fails the test;
#   - a C program linked with Keel::keel needs libkeel.so.<SOVERSION> and not libstdc++.
#   cmake -DLIBRARY=... -DSONAME=... -DLINKER_NAME=... -DC_PROGRAM=... -P shared_library.cmake
foreach(v LIBRARY SONAME LINKER_NAME C_PROGRAM)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "${v} is required")
  endif()
endforeach()
find_program(NM nm REQUIRED)
find_program(READELF readelf REQUIRED)

function(run out)
  execute_process(COMMAND ${ARGN} OUTPUT_VARIABLE o RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}")
  endif()
  set(${out} "${o}" PARENT_SCOPE)
endfunction()

# SONAME and links.
run(dyn "${READELF}" -d "${LIBRARY}")
if(NOT dyn MATCHES "Library soname: \\[${SONAME}\\]")
  message(FATAL_ERROR "${LIBRARY}: SONAME is not ${SONAME}:\n${dyn}")
endif()
if(NOT SONAME MATCHES "^libkeel\\.so\\.[0-9]+(\\.[0-9]+)?$")
  message(FATAL_ERROR "SONAME ${SONAME} is not versioned")
endif()
get_filename_component(dir "${LIBRARY}" DIRECTORY)
foreach(link "${dir}/${SONAME}" "${LINKER_NAME}")
  if(NOT IS_SYMLINK "${link}")
    message(FATAL_ERROR "${link} is not a symbolic link")
  endif()
  file(REAL_PATH "${link}" target)
  file(REAL_PATH "${LIBRARY}" real)
  if(NOT target STREQUAL real)
    message(FATAL_ERROR "${link} -> ${target}, not ${real}")
  endif()
endforeach()

# Exported symbols.
run(syms "${NM}" -D --defined-only --format=posix "${LIBRARY}")
string(REPLACE "\n" ";" lines "${syms}")
set(keel_count 0)
set(bad "")
foreach(line IN LISTS lines)
  if(line STREQUAL "")
    continue()
  endif()
  string(REGEX REPLACE " .*" "" sym "${line}")
  if(sym MATCHES "^keel_")
    math(EXPR keel_count "${keel_count} + 1")
  elseif(NOT sym MATCHES "^(keel\\$bridge\\$cxxbridge1\\$|cxxbridge1\\$)")
    string(APPEND bad "  ${sym}\n")
  endif()
endforeach()
if(NOT bad STREQUAL "")
  message(FATAL_ERROR "${LIBRARY} exports symbols outside keel_* and the cxx bridge:\n${bad}")
endif()
foreach(required keel_version keel_host_new keel_call keel_host_metrics_text_format)
  if(NOT syms MATCHES "(^|\n)${required} ")
    message(FATAL_ERROR "${LIBRARY} does not export ${required}")
  endif()
endforeach()

# The C program.
run(prog "${READELF}" -d "${C_PROGRAM}")
if(NOT prog MATCHES "Shared library: \\[${SONAME}\\]")
  message(FATAL_ERROR "${C_PROGRAM} does not need ${SONAME}:\n${prog}")
endif()
if(prog MATCHES "libstdc\\+\\+")
  message(FATAL_ERROR "${C_PROGRAM} (C, linked with Keel::keel) needs libstdc++:\n${prog}")
endif()
message(STATUS "libkeel.so: SONAME ${SONAME}, ${keel_count} keel_* symbols, nothing else but the cxx bridge")
