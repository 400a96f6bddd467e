# Script mode helper: write a Keel manifest for a built plugin binary, pinning its SHA-256.
#   cmake -DNAME=echo -DVERSION=1.0.0 -DBINARY=/path/libecho.so -DOUT=/path/echo.json
#         [-DRUNTIME=native] [-DPLATFORM=linux] [-DCAPABILITIES=log,kv:read] [-DEXTRA=<json members>]
#         [-DDESCRIPTION=<text>]
#         -P keel_manifest.cmake
# The binary is referenced by file name: the manifest must sit in the same directory.
foreach(v NAME VERSION BINARY OUT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "keel_manifest.cmake: ${v} is required")
  endif()
endforeach()
if(NOT DEFINED RUNTIME)
  set(RUNTIME native)
endif()
if(NOT DEFINED PLATFORM)
  if(RUNTIME STREQUAL "wasm")
    set(PLATFORM wasm32)
  else()
    set(PLATFORM linux)
  endif()
endif()
file(SHA256 "${BINARY}" digest)
get_filename_component(bin_name "${BINARY}" NAME)
if(NOT DEFINED DESCRIPTION OR DESCRIPTION STREQUAL "")
  set(DESCRIPTION "${NAME} sample plugin")
endif()
string(REPLACE "\\" "\\\\" DESCRIPTION "${DESCRIPTION}")
string(REPLACE "\"" "\\\"" DESCRIPTION "${DESCRIPTION}")
set(caps "")
if(DEFINED CAPABILITIES AND NOT CAPABILITIES STREQUAL "")
  string(REPLACE "," "\", \"" caps_list "${CAPABILITIES}")
  set(caps ",\n  \"capabilities\": [\"${caps_list}\"]")
endif()
set(extra "")
if(DEFINED EXTRA AND NOT EXTRA STREQUAL "")
  set(extra ",\n  ${EXTRA}")
endif()
file(WRITE "${OUT}.tmp" "{
  \"manifest_version\": 1,
  \"name\": \"${NAME}\",
  \"version\": \"${VERSION}\",
  \"description\": \"${DESCRIPTION}\",
  \"runtime\": \"${RUNTIME}\",
  \"binary\": { \"${PLATFORM}\": \"${bin_name}\" },
  \"sha256\": \"${digest}\"${caps}${extra}
}
")
file(RENAME "${OUT}.tmp" "${OUT}")
