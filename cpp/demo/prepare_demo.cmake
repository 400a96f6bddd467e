# Lay out the demo dir from the built sample plugins: a demo signing key and trust store,
# signed plugins under live/, the next greeter version under staging/, bad inputs under bad/.
#   cmake -DKEEL_CLI=<keel> -DBUILD=<demo-build dir> -DDEMO=<demo dir> [-DWASM=<dir>] [-DRUN=<demo_host>] -P prepare_demo.cmake
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

file(REMOVE_RECURSE "${DEMO}")
file(MAKE_DIRECTORY "${DEMO}/keys")

# A demo signing key, allowed to sign every plugin. (A real deployment keeps the secret key
# off the database nodes; nodes only get the trust store.)
run("${KEEL_CLI}" keygen --out "${DEMO}/keys/demo" --label "Keel demo key")
file(READ "${DEMO}/keys/demo.pub" entry)
file(WRITE "${DEMO}/trust.json" "{\n  \"keel_trust_store\": 1,\n  \"version\": 1,\n  \"keys\": [${entry}]\n}\n")

function(stage src dst)
  file(MAKE_DIRECTORY "${dst}")
  file(GLOB files "${src}/*")
  foreach(f ${files})
    if(NOT f MATCHES "\\.sig$")
      file(COPY "${f}" DESTINATION "${dst}")
    endif()
  endforeach()
endfunction()

stage("${BUILD}/greeter" "${DEMO}/live/greeter")
stage("${BUILD}/wordstats" "${DEMO}/live/wordstats")
stage("${BUILD}/greeter-v2" "${DEMO}/staging/greeter-v2")
run("${KEEL_CLI}" sign "${DEMO}/live/greeter/greeter.json" --key "${DEMO}/keys/demo.key")
run("${KEEL_CLI}" sign "${DEMO}/live/wordstats/wordstats.json" --key "${DEMO}/keys/demo.key")
run("${KEEL_CLI}" sign "${DEMO}/staging/greeter-v2/greeter.json" --key "${DEMO}/keys/demo.key")
if(WASM)
  stage("${WASM}" "${DEMO}/live/wasm-stats")
  run("${KEEL_CLI}" sign "${DEMO}/live/wasm-stats/wasm-stats.json" --key "${DEMO}/keys/demo.key")
endif()

# Bad inputs.
# - tampered: a signed manifest whose binary was replaced after signing.
stage("${BUILD}/audit" "${DEMO}/bad/tampered")
run("${KEEL_CLI}" sign "${DEMO}/bad/tampered/audit.json" --key "${DEMO}/keys/demo.key")
file(COPY_FILE "${BUILD}/evil/libaudit.so" "${DEMO}/bad/tampered/libaudit.so")
# - malformed JSON.
file(MAKE_DIRECTORY "${DEMO}/bad/malformed")
file(WRITE "${DEMO}/bad/malformed/broken.json" "{ \"manifest_version\": 1, \"name\": \"broken\", ")
# - valid JSON that breaks the schema.
file(MAKE_DIRECTORY "${DEMO}/bad/schema")
file(WRITE "${DEMO}/bad/schema/schema.json"
  "{ \"manifest_version\": 1, \"name\": \"Bad Name\", \"version\": \"one\", \"runtime\": \"native\", \"binary\": {}, \"sha256\": \"xyz\" }\n")
# - a correct but unsigned plugin.
stage("${BUILD}/audit" "${DEMO}/bad/unsigned")

if(RUN)
  run("${RUN}" "${DEMO}")
endif()
