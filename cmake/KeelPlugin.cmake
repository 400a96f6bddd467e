# keel_add_plugin: build a Keel plugin, write its manifest pinning the binary's SHA-256, sign
# it, and lay it out as a folder keel_host_load_dir() loads. Installed with the package
# (find_package(Keel) includes it) and used in-tree by Keel's own tests.
#
#   keel_add_plugin(<name>                      # or NAME <name>; the plugin's (and target's) name
#     RUNTIME native|wasm
#     SOURCES <file>...
#     [VERSION <semver>]                        # default: PROJECT_VERSION, else 0.1.0
#     [CAPABILITIES <cap>...]                   # e.g. log kv:read
#     [DEPENDS <dep>...]                        # "<plugin>" (any version) or "<plugin><req>",
#                                               # e.g. "storage>=1.2" or "storage^1"
#     [SIGN_KEY <secret key file>]              # from `keel keygen` / `keel trust init`
#     [OUTPUT_DIR <dir>]                        # default: ${CMAKE_CURRENT_BINARY_DIR}/keel-plugins
#     [DESCRIPTION <text>] [CONFIG <json object>] [EXTRA <json members>]
#     [TARGET <cmake target name>]              # default: keel_plugin_<name>
#     [INCLUDE_DIRECTORIES <dir>...] [COMPILE_DEFINITIONS <def>...] [COMPILE_OPTIONS <opt>...])
#
# Result: <OUTPUT_DIR>/<name>/ holding the binary (lib<name>.so or <name>.wasm), keel.json
# (manifest_version 1, the binary's SHA-256 pinned) and, with SIGN_KEY, keel.json.sig.
# A native plugin is a MODULE library linked against Keel::plugin_sdk only (headers; never
# libkeel), built with the project's C/C++ compiler, hidden visibility (only
# keel_plugin_entry is exported). A WASM plugin is compiled and linked in one step by clang
# for wasm32 (-nostdlib, wasm-ld; KEEL_WASM_CLANG, found on PATH) with keel/keel_wasm.h;
# KEEL_WASM_FLAGS adds flags (e.g. a --sysroot) — or, in a project configured with the
# installed toolchain file KeelWasm32Toolchain.cmake, as an ordinary executable target of the
# project's (wasm32) compiler. The target's property KEEL_PLUGIN_DIR holds
# the folder, KEEL_PLUGIN_MANIFEST the manifest.
#
# Signing uses the `keel` CLI: KEEL_CLI (set by the package), and KEEL_CLI_TARGET when the CLI
# is itself built by this project.
include_guard(GLOBAL)
if(NOT KEEL_PLUGIN_SDK_INCLUDE_DIR OR NOT TARGET Keel::plugin_sdk)
  message(FATAL_ERROR "KeelPlugin.cmake: include it through find_package(Keel) (Keel::plugin_sdk and KEEL_PLUGIN_SDK_INCLUDE_DIR)")
endif()

# Recorded once, globally, so that keel_add_plugin works from any directory of the project
# (also when Keel itself was added with add_subdirectory()).
set_property(GLOBAL PROPERTY KEEL_PLUGIN_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")
set_property(GLOBAL PROPERTY KEEL_PLUGIN_SDK_INCLUDE_DIR "${KEEL_PLUGIN_SDK_INCLUDE_DIR}")
set_property(GLOBAL PROPERTY KEEL_CLI "${KEEL_CLI}")
set_property(GLOBAL PROPERTY KEEL_CLI_TARGET "${KEEL_CLI_TARGET}")

function(keel_add_plugin)
  get_property(_KEEL_PLUGIN_CMAKE_DIR GLOBAL PROPERTY KEEL_PLUGIN_CMAKE_DIR)
  get_property(KEEL_PLUGIN_SDK_INCLUDE_DIR GLOBAL PROPERTY KEEL_PLUGIN_SDK_INCLUDE_DIR)
  get_property(KEEL_CLI_TARGET GLOBAL PROPERTY KEEL_CLI_TARGET)
  if(NOT KEEL_CLI)
    get_property(KEEL_CLI GLOBAL PROPERTY KEEL_CLI)
  endif()
  set(args ${ARGN})
  list(GET args 0 first)
  if(first STREQUAL "NAME")
    list(GET args 1 name)
    list(REMOVE_AT args 0 1)
  else()
    set(name "${first}")
    list(REMOVE_AT args 0)
  endif()
  cmake_parse_arguments(P ""
    "RUNTIME;VERSION;SIGN_KEY;OUTPUT_DIR;DESCRIPTION;CONFIG;EXTRA;TARGET;DIR;MANIFEST;OUTPUT_NAME"
    "SOURCES;CAPABILITIES;DEPENDS;INCLUDE_DIRECTORIES;COMPILE_DEFINITIONS;COMPILE_OPTIONS" ${args})
  if(P_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "keel_add_plugin(${name}): unknown arguments: ${P_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT name MATCHES "^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    message(FATAL_ERROR "keel_add_plugin: '${name}' is not a plugin name (letters, digits, _ . -)")
  endif()
  if(NOT P_RUNTIME MATCHES "^(native|wasm)$")
    message(FATAL_ERROR "keel_add_plugin(${name}): RUNTIME must be native or wasm (got '${P_RUNTIME}')")
  endif()
  if(NOT P_SOURCES)
    message(FATAL_ERROR "keel_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT P_VERSION)
    if(PROJECT_VERSION)
      set(P_VERSION "${PROJECT_VERSION}")
    else()
      set(P_VERSION "0.1.0")
    endif()
  endif()
  if(NOT P_OUTPUT_DIR)
    set(P_OUTPUT_DIR "${CMAKE_CURRENT_BINARY_DIR}/keel-plugins")
  endif()
  if(NOT P_TARGET)
    set(P_TARGET "keel_plugin_${name}")
  endif()
  if(NOT P_DESCRIPTION)
    set(P_DESCRIPTION "${name} plugin")
  endif()
  # DIR, MANIFEST, OUTPUT_NAME (undocumented): an exact folder, manifest file name and binary
  # name, for Keel's own fixtures whose layout predates keel_add_plugin.
  set(dir "${P_OUTPUT_DIR}/${name}")
  if(P_DIR)
    set(dir "${P_DIR}")
  endif()
  if(NOT P_MANIFEST)
    set(P_MANIFEST keel.json)
  endif()
  if(NOT P_OUTPUT_NAME)
    set(P_OUTPUT_NAME "${name}")
  endif()
  set(manifest "${dir}/${P_MANIFEST}")

  # Manifest members beyond the script's own: dependencies, config, description, EXTRA.
  set(extra "")
  if(P_DEPENDS)
    set(deps "")
    foreach(d IN LISTS P_DEPENDS)
      if(NOT d MATCHES "^([A-Za-z0-9][A-Za-z0-9_.-]*)(.*)$")
        message(FATAL_ERROR "keel_add_plugin(${name}): DEPENDS entry '${d}' does not start with a plugin name")
      endif()
      set(dep_name "${CMAKE_MATCH_1}")
      string(STRIP "${CMAKE_MATCH_2}" dep_req)
      if(dep_req STREQUAL "")
        set(dep_req "*")
      endif()
      if(deps)
        string(APPEND deps ", ")
      endif()
      string(APPEND deps "\"${dep_name}\": \"${dep_req}\"")
    endforeach()
    set(extra "\"dependencies\": { ${deps} }")
  endif()
  if(P_CONFIG)
    if(extra)
      string(APPEND extra ", ")
    endif()
    string(APPEND extra "\"config\": ${P_CONFIG}")
  endif()
  if(P_EXTRA)
    if(extra)
      string(APPEND extra ", ")
    endif()
    string(APPEND extra "${P_EXTRA}")
  endif()
  string(REPLACE ";" "," caps "${P_CAPABILITIES}")

  set(sign_cmd "")
  set(sign_deps "")
  set(key "")
  if(P_SIGN_KEY)
    get_filename_component(key "${P_SIGN_KEY}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT KEEL_CLI)
      message(FATAL_ERROR "keel_add_plugin(${name}): SIGN_KEY needs the keel CLI (KEEL_CLI is not set)")
    endif()
    set(sign_cmd COMMAND "${KEEL_CLI}" sign --key "${key}" "${manifest}")
    if(KEEL_CLI_TARGET)
      list(APPEND sign_deps ${KEEL_CLI_TARGET})
    endif()
  endif()
  set(manifest_cmd COMMAND "${CMAKE_COMMAND}" "-DNAME=${name}" "-DVERSION=${P_VERSION}" "-DRUNTIME=${P_RUNTIME}"
    "-DDESCRIPTION=${P_DESCRIPTION}" "-DCAPABILITIES=${caps}" "-DEXTRA=${extra}" "-DOUT=${manifest}")

  if(CMAKE_SYSTEM_PROCESSOR STREQUAL "wasm32" AND NOT P_RUNTIME STREQUAL "wasm")
    message(FATAL_ERROR "keel_add_plugin(${name}): RUNTIME native with a wasm32 toolchain (KeelWasm32Toolchain.cmake)")
  endif()
  if(P_RUNTIME STREQUAL "wasm" AND CMAKE_SYSTEM_PROCESSOR STREQUAL "wasm32")
    # The project's compiler targets wasm32 (KeelWasm32Toolchain.cmake): an ordinary target.
    add_executable(${P_TARGET} ${P_SOURCES})
    target_link_libraries(${P_TARGET} PRIVATE Keel::plugin_sdk)
    target_include_directories(${P_TARGET} PRIVATE ${P_INCLUDE_DIRECTORIES})
    target_compile_definitions(${P_TARGET} PRIVATE ${P_COMPILE_DEFINITIONS})
    target_compile_options(${P_TARGET} PRIVATE ${P_COMPILE_OPTIONS})
    set_target_properties(${P_TARGET} PROPERTIES
      OUTPUT_NAME "${P_OUTPUT_NAME}" SUFFIX ".wasm" RUNTIME_OUTPUT_DIRECTORY "${dir}")
    foreach(cfg IN LISTS CMAKE_CONFIGURATION_TYPES)
      string(TOUPPER "${cfg}" cfg)
      set_target_properties(${P_TARGET} PROPERTIES RUNTIME_OUTPUT_DIRECTORY_${cfg} "${dir}")
    endforeach()
    if(sign_deps)
      add_dependencies(${P_TARGET} ${sign_deps})
    endif()
    add_custom_command(TARGET ${P_TARGET} POST_BUILD
      ${manifest_cmd} "-DBINARY=$<TARGET_FILE:${P_TARGET}>" -P "${_KEEL_PLUGIN_CMAKE_DIR}/keel_manifest.cmake"
      ${sign_cmd}
      VERBATIM)
  elseif(P_RUNTIME STREQUAL "native")
    add_library(${P_TARGET} MODULE ${P_SOURCES})
    target_link_libraries(${P_TARGET} PRIVATE Keel::plugin_sdk)
    target_include_directories(${P_TARGET} PRIVATE ${P_INCLUDE_DIRECTORIES})
    target_compile_definitions(${P_TARGET} PRIVATE ${P_COMPILE_DEFINITIONS})
    target_compile_options(${P_TARGET} PRIVATE ${P_COMPILE_OPTIONS})
    set_target_properties(${P_TARGET} PROPERTIES
      OUTPUT_NAME "${P_OUTPUT_NAME}" PREFIX "lib" SUFFIX ".so" LIBRARY_OUTPUT_DIRECTORY "${dir}"
      C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
    # Multi-config generators: one folder whatever the configuration.
    foreach(cfg IN LISTS CMAKE_CONFIGURATION_TYPES)
      string(TOUPPER "${cfg}" cfg)
      set_target_properties(${P_TARGET} PROPERTIES LIBRARY_OUTPUT_DIRECTORY_${cfg} "${dir}")
    endforeach()
    if(sign_deps)
      add_dependencies(${P_TARGET} ${sign_deps})
    endif()
    add_custom_command(TARGET ${P_TARGET} POST_BUILD
      ${manifest_cmd} "-DBINARY=$<TARGET_FILE:${P_TARGET}>" -P "${_KEEL_PLUGIN_CMAKE_DIR}/keel_manifest.cmake"
      ${sign_cmd}
      VERBATIM)
  else()
    if(NOT KEEL_WASM_CLANG)
      find_program(KEEL_WASM_CLANG NAMES clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14)
    endif()
    if(NOT KEEL_WASM_CLANG)
      message(FATAL_ERROR "keel_add_plugin(${name}): RUNTIME wasm needs clang with the wasm32 target and wasm-ld (lld); set KEEL_WASM_CLANG")
    endif()
    set(wasm "${dir}/${P_OUTPUT_NAME}.wasm")
    set(srcs "")
    foreach(s IN LISTS P_SOURCES)
      get_filename_component(s "${s}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
      list(APPEND srcs "${s}")
    endforeach()
    set(incs "")
    foreach(i IN LISTS P_INCLUDE_DIRECTORIES)
      get_filename_component(i "${i}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
      list(APPEND incs "-I${i}")
    endforeach()
    # Keel::plugin_sdk's headers (KEEL_PLUGIN_SDK_INCLUDE_DIR: set by the package, or in-tree).
    set(sdk_flags "-I${KEEL_PLUGIN_SDK_INCLUDE_DIR}")
    set(defs "")
    foreach(d IN LISTS P_COMPILE_DEFINITIONS)
      list(APPEND defs "-D${d}")
    endforeach()
    add_custom_command(OUTPUT "${wasm}" "${manifest}"
      COMMAND "${CMAKE_COMMAND}" -E make_directory "${dir}"
      COMMAND "${KEEL_WASM_CLANG}" --target=wasm32 -nostdlib -O2 ${KEEL_WASM_FLAGS} ${P_COMPILE_OPTIONS}
              -Wl,--no-entry -Wl,--export-dynamic ${sdk_flags} ${incs} ${defs} -o "${wasm}" ${srcs}
      ${manifest_cmd} "-DBINARY=${wasm}" -P "${_KEEL_PLUGIN_CMAKE_DIR}/keel_manifest.cmake"
      ${sign_cmd}
      DEPENDS ${srcs} "${_KEEL_PLUGIN_CMAKE_DIR}/keel_manifest.cmake" ${sign_deps} ${key}
              "${KEEL_PLUGIN_SDK_INCLUDE_DIR}/keel/keel_wasm.h"
      COMMENT "Building WASM plugin ${name}"
      VERBATIM)
    add_custom_target(${P_TARGET} ALL DEPENDS "${wasm}")
  endif()
  set_target_properties(${P_TARGET} PROPERTIES KEEL_PLUGIN_DIR "${dir}" KEEL_PLUGIN_MANIFEST "${manifest}")
endfunction()
