# Script mode helper: write a ThemisDB plugin.json (manifest v2 fields) for a built legacy C++
# plugin, pinning its SHA-256 as expected_hash.
#   cmake -DNAME=legacy -DVERSION=1.0.0 -DBINARY=/path/liblegacy.so -DOUT=/path/plugin.json
#         [-DTYPE=custom] [-DCAPABILITIES=streaming,thread_safe] -P themis_plugin_json.cmake
# The binary is referenced by file name: the manifest must sit in the same directory.
foreach(v NAME VERSION BINARY OUT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "themis_plugin_json.cmake: ${v} is required")
  endif()
endforeach()
if(NOT DEFINED TYPE)
  set(TYPE custom)
endif()
file(SHA256 "${BINARY}" digest)
get_filename_component(bin_name "${BINARY}" NAME)
set(caps "")
if(DEFINED CAPABILITIES AND NOT CAPABILITIES STREQUAL "")
  string(REPLACE "," "\": true, \"" caps_list "${CAPABILITIES}")
  set(caps ",\n  \"capabilities\": { \"${caps_list}\": true }")
endif()
file(WRITE "${OUT}.tmp" "{
  \"name\": \"${NAME}\",
  \"version\": \"${VERSION}\",
  \"type\": \"${TYPE}\",
  \"description\": \"ThemisDB C++ plugin ${NAME} (Keel test fixture)\",
  \"binary\": { \"linux\": \"${bin_name}\" }${caps},
  \"expected_hash\": \"${digest}\"
}
")
file(RENAME "${OUT}.tmp" "${OUT}")
