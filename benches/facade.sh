#!/usr/bin/env bash
# The PluginManager façade bench (benches/cpp/bench_plugin_manager.cpp) on a Release build:
# configures build-release/ (Keel built with cargo --release), builds the bench and the echo
# fixture, runs it. Usage: benches/facade.sh [plugins to list, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON >/dev/null
cmake --build build-release --target bench_plugin_manager
./build-release/benches/bench_plugin_manager build-release/tests/fixtures "${1:-1000}"
