# Script mode, run after cargo by the keel_cargo target: stage the files of the cxx bridge
# (the C++ API, include/keel/keel.hpp) that cxx-build and the cxx crate leave as symbolic
# links under $CARGO_TARGET_DIR/cxxbridge, as plain files with a fixed layout:
#   OUT/include/rust/cxx.h                   cxx's header (rust::Box, rust::Vec, rust::Error, ...)
#   OUT/include/keel/src/bridge/mod.rs.h     the generated bridge header (keel.hpp includes it)
#   OUT/src/keel_bridge.cc                   the generated C++ half of the bridge
#   OUT/cxx/src/cxx.cc, OUT/cxx/include/cxx.h   cxx's C++ runtime (cxx.cc includes ../include/cxx.h)
# The two .cc files make libkeel_cxx.a, the C++ half that programs linking libkeel.so need
# (libkeel.so exports only the Rust half). Files are rewritten only when their content changed.
#   cmake -DTARGET_DIR=<cargo target dir> -DOUT=<dir> -P keel_cxxbridge.cmake
foreach(v TARGET_DIR OUT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "keel_cxxbridge.cmake: ${v} is required")
  endif()
endforeach()
set(gen "${TARGET_DIR}/cxxbridge")
foreach(f "${gen}/rust/cxx.h" "${gen}/keel/src/bridge/mod.rs.h" "${gen}/keel/src/bridge/mod.rs.cc")
  if(NOT EXISTS "${f}")
    message(FATAL_ERROR "keel_cxxbridge.cmake: ${f} is missing (cxx-build writes it when cargo builds keel)")
  endif()
endforeach()
# cxx.h links into the cxx crate's sources (include/cxx.h); its runtime is src/cxx.cc there.
file(REAL_PATH "${gen}/rust/cxx.h" cxx_h)
get_filename_component(cxx_root "${cxx_h}" DIRECTORY)
get_filename_component(cxx_root "${cxx_root}" DIRECTORY)
set(cxx_cc "${cxx_root}/src/cxx.cc")
if(NOT EXISTS "${cxx_cc}")
  message(FATAL_ERROR "keel_cxxbridge.cmake: cxx's runtime ${cxx_cc} is missing (next to ${cxx_h})")
endif()
file(MAKE_DIRECTORY "${OUT}/include/rust" "${OUT}/include/keel/src/bridge" "${OUT}/src" "${OUT}/cxx/src"
     "${OUT}/cxx/include")
file(COPY_FILE "${cxx_h}" "${OUT}/include/rust/cxx.h" ONLY_IF_DIFFERENT)
file(COPY_FILE "${gen}/keel/src/bridge/mod.rs.h" "${OUT}/include/keel/src/bridge/mod.rs.h" ONLY_IF_DIFFERENT)
file(COPY_FILE "${gen}/keel/src/bridge/mod.rs.cc" "${OUT}/src/keel_bridge.cc" ONLY_IF_DIFFERENT)
file(COPY_FILE "${cxx_h}" "${OUT}/cxx/include/cxx.h" ONLY_IF_DIFFERENT)
file(COPY_FILE "${cxx_cc}" "${OUT}/cxx/src/cxx.cc" ONLY_IF_DIFFERENT)
