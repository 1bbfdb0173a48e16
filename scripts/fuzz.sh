#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz in build-fuzz/ (clang-14, ASan and
# UBSan) and runs each for SECONDS (default 60), starting from seeds made from
# ../shared and the regression inputs in tests/data/fuzz-regressions/<target>/.
# Prints the executions per target; exits non-zero when a target crashed (the
# input is saved in build-fuzz/artifacts/<target>/: add it to the regressions).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
root=$PWD
shared=${SPARQ_SHARED:-$(cd .. && pwd)/shared}
cmake -S . -B build-fuzz -DSPARQ_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j2 >/dev/null
out=build-fuzz/out
mkdir -p "$out"

# A safetensors image: 8-byte little-endian header length, header, data.
safetensors_seed() {
  local header=$1 data_bytes=$2 n=${#1} le="" i
  for i in 0 1 2 3 4 5 6 7; do le+=$(printf '\\x%02x' $(((n >> (8 * i)) & 255))); done
  printf "$le%s" "$header"
  head -c "$data_bytes" /dev/zero
}

seed_dir() {  # fresh seeds each run; the corpus libFuzzer grows is kept
  local d=build-fuzz/seeds/$1
  rm -rf "$d"
  mkdir -p "$d" "build-fuzz/corpus/$1" "build-fuzz/artifacts/$1"
  [ -d "tests/data/fuzz-regressions/$1" ] && cp tests/data/fuzz-regressions/"$1"/* "$d"/ 2>/dev/null
  echo "$d"
}

make_seeds() {
  local d
  d=$(seed_dir fuzz_safetensors)
  safetensors_seed '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}' 8 >"$d/tiny"
  safetensors_seed '{"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"c":{"dtype":"F16","shape":[1],"data_offsets":[8,10]},"d":{"dtype":"I64","shape":[],"data_offsets":[10,18]}}' 18 >"$d/mixed"
  if [ -d "$shared/models" ]; then
    local f n=0
    for f in "$shared"/models/*/*.safetensors; do
      head -c 65536 "$f" >"$d/prefix-$((n++))"  # the header and the start of the data
    done
  fi
  d=$(seed_dir fuzz_config)
  [ -d "$shared/models" ] && for m in "$shared"/models/*/config.json; do cp "$m" "$d/$(basename "$(dirname "$m")")"; done
  echo '{"architectures":["LlamaForCausalLM"],"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"intermediate_size":16,"vocab_size":32,"max_position_embeddings":64,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32},"bos_token_id":1,"eos_token_id":[2,3]}' >"$d/llama3"
  d=$(seed_dir fuzz_tokenizer_json)
  [ -d "$shared/models" ] && cp "$shared/models/stories260K-hf/tokenizer.json" "$d/stories260K" &&
    cp "$shared/golden/bytelevel-bpe/tokenizer.json" "$d/bytelevel"
  d=$(seed_dir fuzz_tokenizer_encode)
  if [ -f "$shared/eval/heldout.txt" ]; then
    head -c 8192 "$shared/eval/heldout.txt" | split -b 512 - "$d/heldout-"
    for f in "$d"/heldout-a[a-h]; do printf '\x02' | cat - "$f" >"$f.bytelevel"; done
  fi
  printf '\x00caf\xc3\xa9 \xf0\x9f\x99\x82 <s> </s> \xff\xfe bad utf-8' >"$d/mixed"
  d=$(seed_dir fuzz_batch_line)
  if [ -d "$shared/eval" ]; then
    head -n 3 "$shared/eval/needle.jsonl" | split -l 1 - "$d/needle-"
    head -n 3 "$shared/eval/repeat.jsonl" | split -l 1 - "$d/repeat-"
  fi
  echo '{"id": 1, "task": "score", "prompt": "The cat", "reference": " sat", "n_predict": 4}' >"$d/score"
  echo '{"id": "g", "prompt_file": "prompt.txt"}' >"$d/file"
}
make_seeds

failed=0
printf '\n| target | seconds | executions | exec/s | corpus | result |\n|---|---:|---:|---:|---:|---|\n' >"$out/summary.md"
for bin in build-fuzz/tests/fuzz/fuzz_*; do
  t=$(basename "$bin")
  if [ "$t" = fuzz_tokenizer_encode ] && [ ! -d "$shared/models" ]; then
    echo "| $t | - | - | - | - | skipped: $shared absent |" >>"$out/summary.md"
    continue
  fi
  log=$out/$t.log
  status=ok
  # -rss_limit_mb: a parser that wants gigabytes for a small input is a bug too.
  SPARQ_SHARED=$shared "$bin" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
    -timeout=10 -artifact_prefix="build-fuzz/artifacts/$t/" "build-fuzz/corpus/$t" "build-fuzz/seeds/$t" \
    >"$log" 2>&1 || { status="CRASH (see $log)"; failed=1; }
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  corpus=$(find "build-fuzz/corpus/$t" -type f | wc -l)
  echo "| $t | $seconds | ${execs:-?} | ${rate:-?} | $corpus | $status |" >>"$out/summary.md"
  [ "$status" = ok ] || grep -m 5 -E "ERROR|SUMMARY|==[0-9]+==|runtime error" "$log" || true
done
cat "$out/summary.md"
exit $failed
