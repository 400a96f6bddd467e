# Install Keel into a fresh prefix, configure and build tests/consumer against it with
# find_package(Keel CONFIG REQUIRED), and run the consumer.
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}")
  endif()
endfunction()

run("${CMAKE_COMMAND}" --install "${KEEL_BINARY_DIR}" --prefix "${prefix}")
foreach(f include/keel/keel.h include/keel/keel_version.h include/keel/keel_plugin.h include/keel/keel_wasm.h
          include/keel/keel_common.h include/keel/themis_adapter.hpp
          include/keel/themis/plugin_interface.hpp include/keel/themis/self_healing_plugin.hpp
          include/keel/themis/plugin_manager.hpp include/keel/keel.hpp include/keel/cxxbridge/rust/cxx.h
          include/keel/cxxbridge/keel/src/bridge/mod.rs.h lib/libkeel_cxx.a lib/libkeel.so lib/libkeel.so.${SOVERSION}
          lib/libkeel.so.${VERSION} lib/libkeel.a bin/keel libexec/keel/keel-sandbox lib/pkgconfig/keel.pc
          lib/cmake/Keel/KeelConfig.cmake lib/cmake/Keel/KeelConfigVersion.cmake lib/cmake/Keel/KeelPlugin.cmake
          lib/cmake/Keel/keel_manifest.cmake lib/cmake/Keel/KeelWasm32Toolchain.cmake)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "installed package lacks ${f}")
  endif()
endforeach()
foreach(link lib/libkeel.so lib/libkeel.so.${SOVERSION})
  if(NOT IS_SYMLINK "${prefix}/${link}")
    message(FATAL_ERROR "installed ${link} is not a symbolic link")
  endif()
endforeach()

# A trust store and a signing key it trusts, from the installed CLI.
run("${prefix}/bin/keel" trust init --key "${WORK_DIR}/signer" "${WORK_DIR}/trust-store.json")

# 1. find_package(Keel): the C++ API, the static library, the ThemisDB façade, and plugins
#    made with keel_add_plugin (C++ native and WASM, signed) loaded by a host.
run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DKEEL_TESTS_DIR=${KEEL_TESTS_DIR}" "-DKEEL_SIGN_KEY=${WORK_DIR}/signer.key"
    "-DCMAKE_C_COMPILER=${CMAKE_C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}")
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer" "${FIXTURE_DIR}/echo/echo.json")
run("${WORK_DIR}/build/consumer_static" "${FIXTURE_DIR}/echo/echo.json")
run("${WORK_DIR}/build/plugin_manager_consumer" "${FIXTURE_DIR}")
foreach(f cxxplugin/keel.json cxxplugin/keel.json.sig cxxplugin/libcxxplugin.so compute/keel.json
          compute/keel.json.sig compute/compute.wasm)
  if(NOT EXISTS "${WORK_DIR}/build/plugins/${f}")
    message(FATAL_ERROR "keel_add_plugin did not make plugins/${f}")
  endif()
endforeach()
# The plugins as one set (compute depends on cxxplugin): what load_dir would load.
run("${prefix}/bin/keel" verify --trust-store "${WORK_DIR}/trust-store.json" "${WORK_DIR}/build/plugins")
run("${WORK_DIR}/build/plugin_host" "${WORK_DIR}/build/plugins" "${WORK_DIR}/trust-store.json")
message(STATUS "find_package consumer built against the installed package and ran")

# 2. pkg-config only: a C program compiled with `pkg-config --cflags --libs keel`.
find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
set(ENV{PKG_CONFIG_PATH} "${prefix}/lib/pkgconfig")
execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs keel OUTPUT_VARIABLE pc_flags RESULT_VARIABLE rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs keel failed (${rc})")
endif()
execute_process(COMMAND "${PKG_CONFIG}" --modversion keel OUTPUT_VARIABLE pc_version OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT pc_version STREQUAL VERSION)
  message(FATAL_ERROR "pkg-config --modversion keel says '${pc_version}', not ${VERSION}")
endif()
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
run("${CMAKE_C_COMPILER}" -std=c11 -Wall -Wextra -Werror -o "${WORK_DIR}/pkgconfig_consumer"
    "${CONSUMER_SOURCE_DIR}/pkgconfig/main.c" ${pc_flags})
run("${CMAKE_COMMAND}" -E env "LD_LIBRARY_PATH=${prefix}/lib" "${WORK_DIR}/pkgconfig_consumer"
    "${FIXTURE_DIR}/echo/echo.json")
message(STATUS "pkg-config consumer built against the installed package and ran")

# 3. add_subdirectory(): Keel's source tree inside another project, reusing the cargo target
#    directory (nothing of Rust is rebuilt).
run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}/subdir" -B "${WORK_DIR}/subdir"
    "-DKEEL_SOURCE_DIR=${KEEL_SOURCE_DIR}" "-DKEEL_CARGO_TARGET_DIR=${KEEL_CARGO_TARGET_DIR}"
    "-DKEEL_SIGN_KEY=${WORK_DIR}/signer.key"
    "-DCMAKE_C_COMPILER=${CMAKE_C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}")
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/subdir" --target subdir_consumer)
run("${WORK_DIR}/subdir/subdir_consumer" "${FIXTURE_DIR}/echo/echo.json")
run("${prefix}/bin/keel" verify --trust-store "${WORK_DIR}/trust-store.json"
    "${WORK_DIR}/subdir/keel-plugins/cxxplugin/keel.json")
message(STATUS "add_subdirectory consumer built and ran")

# 4. A WASM-plugin-only project with the installed toolchain file.
run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}/wasm_toolchain" -B "${WORK_DIR}/wasm"
    "--toolchain" "${prefix}/lib/cmake/Keel/KeelWasm32Toolchain.cmake"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DKEEL_TESTS_DIR=${KEEL_TESTS_DIR}" "-DKEEL_SIGN_KEY=${WORK_DIR}/signer.key")
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/wasm")
run("${prefix}/bin/keel" verify --trust-store "${WORK_DIR}/trust-store.json" "${WORK_DIR}/wasm/plugins/compute/keel.json")
message(STATUS "WASM plugin built with the installed toolchain file, pinned and signed")
