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
foreach(f include/keel/keel.h include/keel/keel_plugin.h include/keel/keel_wasm.h include/keel/themis_adapter.hpp
          include/keel/themis/plugin_interface.hpp include/keel/themis/self_healing_plugin.hpp
          include/keel/themis/plugin_manager.hpp include/keel/keel.hpp include/keel/cxxbridge/rust/cxx.h
          include/keel/cxxbridge/keel/src/bridge/mod.rs.h lib/libkeel_cxx.a lib/libkeel.so lib/libkeel.a bin/keel
          lib/cmake/Keel/KeelConfig.cmake lib/cmake/Keel/KeelConfigVersion.cmake)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "installed package lacks ${f}")
  endif()
endforeach()
run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DKEEL_TESTS_DIR=${KEEL_TESTS_DIR}"
    "-DCMAKE_C_COMPILER=${CMAKE_C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}")
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer" "${FIXTURE_DIR}/echo/echo.json")
run("${WORK_DIR}/build/consumer_static" "${FIXTURE_DIR}/echo/echo.json")
run("${WORK_DIR}/build/plugin_manager_consumer" "${FIXTURE_DIR}")
message(STATUS "consumer built against the installed package and ran")
