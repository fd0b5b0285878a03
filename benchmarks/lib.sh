# Shared by the benchmarks that run our inference-server beside llama.cpp (engine.sh, server.sh).
# Sourced from the repository root.

# Builds the release inference-server in .build-bench (unless SKIP_BUILD=1) and sets SERVER to it.
build_inference_server() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    swift build -c release --scratch-path .build-bench --product inference-server >&2
  fi
  SERVER="$(swift build -c release --scratch-path .build-bench --show-bin-path)/inference-server"
  [ -x "$SERVER" ] || { echo "no $SERVER (build it, or unset SKIP_BUILD)" >&2; exit 1; }
}

# Installs llama-cpp-python if missing (it builds llama.cpp from source: several minutes) and sets
# LLAMA_VERSION.
ensure_llama_cpp_python() {
  if ! python3 -c 'import llama_cpp' 2>/dev/null; then
    echo "installing llama-cpp-python (builds llama.cpp from source; several minutes)" >&2
    python3 -m pip install -q cmake ninja >&2
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      python3 -m pip install -q llama-cpp-python >&2
  fi
  LLAMA_VERSION=$(python3 -c 'import llama_cpp; print(llama_cpp.__version__)')
}
