# CMake toolchain file for projects that build only Keel WASM plugins:
#   cmake -S . -B build-wasm --toolchain <prefix>/lib/cmake/Keel/KeelWasm32Toolchain.cmake \
#         -DCMAKE_PREFIX_PATH=<prefix>
# The project's C and C++ compiler is then clang for wasm32 (freestanding: -nostdlib, no libc;
# linked by wasm-ld with --no-entry --export-dynamic, so the KEEL_WASM_EXPORT functions of
# keel_wasm.h are the module's exports), and keel_add_plugin(... RUNTIME wasm) builds the
# plugin as an ordinary CMake target (<name>.wasm). Projects with a native toolchain need no
# toolchain file: keel_add_plugin then runs clang --target=wasm32 itself.
# KEEL_WASM_CLANG / KEEL_WASM_CLANGXX: the clang to use (default: found on PATH). Add a
# wasi-libc with -DCMAKE_SYSROOT=<sysroot> (and drop -nostdlib through CMAKE_C_FLAGS) if the
# plugin needs libc.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR wasm32)
set(KEEL_WASM_TOOLCHAIN ON)

find_program(KEEL_WASM_CLANG NAMES clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14 REQUIRED)
find_program(KEEL_WASM_CLANGXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)
set(CMAKE_C_COMPILER "${KEEL_WASM_CLANG}")
set(CMAKE_C_COMPILER_TARGET wasm32)
if(KEEL_WASM_CLANGXX)
  set(CMAKE_CXX_COMPILER "${KEEL_WASM_CLANGXX}")
  set(CMAKE_CXX_COMPILER_TARGET wasm32)
endif()
set(CMAKE_C_FLAGS_INIT "-nostdlib")
set(CMAKE_CXX_FLAGS_INIT "-nostdlib -fno-exceptions -fno-rtti")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-nostdlib -Wl,--no-entry -Wl,--export-dynamic")
set(CMAKE_EXECUTABLE_SUFFIX ".wasm")
# No runtime to link a test executable against: check the compiler with a static library.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
# Programs (the keel CLI) from the host; packages (Keel) from CMAKE_PREFIX_PATH as usual.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
