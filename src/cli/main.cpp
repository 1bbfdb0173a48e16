// sparq-run: the command line. Parses flags (llama.cpp names where they
// exist), loads the model, runs the prompt and streams the continuation to
// stdout; everything else goes to stderr.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <omp.h>

#include "sparq/bench/bench_attention.h"
#include "sparq/bench/bench_matmul.h"
#include "sparq/bench/bench_model.h"
#include "sparq/util/build_info.h"
#include "sparq/util/cpu.h"
#include "sparq/eval/eval.h"
#include "sparq/engine/generate.h"
#include "sparq/util/interrupt.h"
#include "sparq/engine/kv_budget.h"
#include "sparq/cli/profile.h"
#include "sparq/cli/report.h"
#include "sparq/engine/trace.h"

namespace {

using namespace sparq;

struct RunFlags {
  std::string model, prompt, prompt_file, dtype = "bf16", kv_type = "bf16", attention = "sparq";
  std::string stats_json, trace_file;
  bool profile = false;
  std::string batch_file, out_file, compare, summary_json, perplexity_file;
  int parallel = 0;
  bool quiet = false, resume = false;
  int n_predict = 128, ctx = 0, threads = 0, batch = 512;
  int64_t seed = -1;
  SparqSettings sp{.r = 0, .k = 0, .local = -1, .ratio = 8, .k_floor = 128, .mean_mixing = false};
  std::string sparq_group = SparqSettings{}.group == GroupRule::logit ? "logit" : "prob";
  SamplerOptions sampling;
  bool verbose = false, ignore_eos = false, no_bos = false, fixed_threads = false;
};

KVType parse_kv(const std::string& s, const char* flag) {
  try {
    return parse_kv_type(s);
  } catch (const Error& e) {
    fail("{}: {}", flag, e.what());
  }
}

WeightFormat parse_format(const std::string& s) {
  for (WeightFormat f : {WeightFormat::F32, WeightFormat::BF16, WeightFormat::Q8_0, WeightFormat::Q4_0})
    if (s == weight_format_name(f)) return f;
  fail("--dtype must be f32, bf16, q8_0 or q4_0, got '{}'", s);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open prompt file {}", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// --help in groups, as llama.cpp prints it: each option on one line, its
// value's kind in the left column and its default at the end of the right.
class GroupedHelp : public CLI::Formatter {
 public:
  GroupedHelp() { column_width(32); }
  // One blank line between groups (CLI11 puts two): after the usage line
  // rather than before each group.
  std::string make_usage(const CLI::App* app, std::string name) const override {
    return CLI::Formatter::make_usage(app, name) + "\n";
  }
  std::string make_group(std::string group, bool positional, std::vector<const CLI::Option*> opts) const override {
    return CLI::Formatter::make_group(group, positional, opts).substr(1);
  }
  // "--sparq-mean,--sparq-no-mean" without CLI11's "{false}" after the negation
  std::string make_option_name(const CLI::Option* opt, bool positional) const override {
    std::string name = CLI::Formatter::make_option_name(opt, positional);
    for (size_t a; (a = name.find('{')) != std::string::npos;) name.erase(a, name.find('}', a) - a + 1);
    return name;
  }
  std::string make_option_opts(const CLI::Option* opt) const override {
    if (opt->get_type_size() == 0) return {};
    const bool list = opt->get_expected_max() >= CLI::detail::expected_max_vector_size;
    return " " + opt->get_type_name() + (list ? ",..." : "");
  }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string def = opt->get_default_str();
    if (def.size() >= 2 && def.front() == '[' && def.back() == ']') def = def.substr(1, def.size() - 2);
    return opt->get_description() + (def.empty() ? "" : " (default: " + def + ")");
  }
};

void add_run_flags(CLI::App& app, RunFlags& o) {
  app.formatter(std::make_shared<GroupedHelp>());  // bench's help too: a subcommand takes its parent's
  app.get_help_ptr()->group("help and version");
  if (CLI::Option* v = app.get_version_ptr()) v->group("help and version");

  const std::string model = "model and context";
  app.add_option("-m,--model", o.model, "model directory, or a .safetensors file with config.json and tokenizer.json beside it")
      ->type_name("PATH")->group(model);
  app.add_option("-p,--prompt", o.prompt, "prompt text")->group(model);
  app.add_option("-f,--file", o.prompt_file, "read the prompt from a file")->type_name("FILE")->group(model);
  app.add_option("-c,--ctx-size", o.ctx, "context size, prompt and generated tokens; 0: the model's trained context, halved until its KV cache fits")
      ->capture_default_str()->group(model);
  app.add_option("-b,--batch-size", o.batch, "prompt tokens per forward pass")->capture_default_str()->group(model);
  app.add_option("--dtype", o.dtype, "weight format: f32, bf16, q8_0 or q4_0, quantized at load")->capture_default_str()->group(model);
  app.add_option("--kv-type", o.kv_type, "KV cache type: f32, bf16 or q8_0")->capture_default_str()->group(model);
  app.add_flag("--no-bos", o.no_bos, "do not add the beginning-of-sequence token")->group(model);

  const std::string gen = "generation and sampling";
  app.add_option("-n,--n-predict", o.n_predict, "tokens to generate; -1: until EOS or the context is full")
      ->capture_default_str()->group(gen);
  app.add_option("-s,--seed", o.seed, "sampling seed; -1: random, printed")->capture_default_str()->group(gen);
  app.add_option("--temp", o.sampling.temp, "temperature; 0: greedy")->capture_default_str()->group(gen);
  app.add_option("--top-k", o.sampling.top_k, "top-k sampling; 0: off")->capture_default_str()->group(gen);
  app.add_option("--top-p", o.sampling.top_p, "top-p sampling; 1: off")->capture_default_str()->group(gen);
  app.add_option("--min-p", o.sampling.min_p, "min-p sampling; 0: off")->capture_default_str()->group(gen);
  app.add_option("--repeat-penalty", o.sampling.repeat_penalty, "repetition penalty; 1: off")
      ->capture_default_str()->group(gen);
  app.add_option("--repeat-last-n", o.sampling.repeat_last_n, "tokens the penalty looks back over")
      ->capture_default_str()->group(gen);
  app.add_flag("--ignore-eos", o.ignore_eos, "keep generating after end-of-sequence")->group(gen);

  const std::string attn = "attention and SparQ";
  app.add_option("--attention", o.attention,
                 "decode attention: dense, sparq (the --sparq-* flags), sparq:N, sparq:r=R,k=K[,l=L], window:N, h2o:N, topk:N")
      ->type_name("SETTING")->capture_default_str()->group(attn);
  app.add_option("--sparq-ratio", o.sp.ratio, "SparQ target: 1/N of dense KV bytes")->capture_default_str()->group(attn);
  app.add_option("--sparq-r", o.sp.r, "SparQ components of q in step 1; 0: from the ratio")->capture_default_str()->group(attn);
  app.add_option("--sparq-k", o.sp.k, "SparQ positions fetched in step 3; 0: from the ratio, at least the floor")
      ->capture_default_str()->group(attn);
  app.add_option("--sparq-local", o.sp.local, "SparQ local window; -1: k/4")->capture_default_str()->group(attn);
  app.add_option("--sparq-k-floor", o.sp.k_floor, "smallest k the ratio rule picks")->capture_default_str()->group(attn);
  app.add_option("--sparq-split", o.sp.split, "percent of the ratio rule's bytes that step 1 (r) gets")
      ->capture_default_str()->group(attn);
  app.add_option("--sparq-group", o.sparq_group, "how a GQA group picks positions: prob or logit")
      ->capture_default_str()->group(attn);
  app.add_flag("--sparq-mean,!--sparq-no-mean", o.sp.mean_mixing,
               "mix the output with the mean of V by 1 - alpha, or not (default: off, as the authors for GQA)")
      ->group(attn);

  const std::string eval = "evaluation";
  app.add_option("--batch", o.batch_file, "evaluate a JSONL batch file (tasks generate, score, repeat, match)")
      ->type_name("FILE")->group(eval);
  app.add_option("--perplexity", o.perplexity_file, "perplexity, KL and top-1 agreement vs dense over a text file")
      ->type_name("FILE")->group(eval);
  app.add_option("--compare", o.compare, "attention settings to run side by side, e.g. dense,sparq:8,sparq:16")
      ->type_name("LIST")->group(eval);
  app.add_option("--out", o.out_file, "--batch results as JSONL; empty: stdout")->type_name("FILE")->group(eval);
  app.add_option("--summary-json", o.summary_json, "write the evaluation summary to this file")->type_name("FILE")->group(eval);
  app.add_option("--parallel", o.parallel, "sequences decoded together; 0: as many as fit")->capture_default_str()->group(eval);
  app.add_flag("--resume", o.resume, "skip (id, setting) results already in --out")->group(eval);

  const std::string out = "output and statistics";
  app.add_flag("--verbose", o.verbose, "print a line per decode step (S, bytes, ratio, ms)")->group(out);
  app.add_option("--stats-json", o.stats_json, "write per-step and per-layer KV bytes and times to this file")
      ->type_name("FILE")->group(out);
  app.add_flag("--profile", o.profile, "print time, bytes and GB/s per phase at the end")->group(out);
  app.add_option("--trace", o.trace_file, "write a Chrome trace-event JSON file (Perfetto, chrome://tracing)")
      ->type_name("FILE")->group(out);
  app.add_flag("--quiet", o.quiet, "no progress line (--batch, --perplexity)")->group(out);

  const std::string cpu = "threads and CPU";
  app.add_option("-t,--threads", o.threads, "threads; 0: all cores")->capture_default_str()->group(cpu);
  app.add_flag("--fixed-threads", o.fixed_threads,
               "decode on exactly -t threads (default: one fewer while that is faster)")->group(cpu);
}

// Comma-separated settings; the items of "sparq:r=8,k=64,mean" (or of any
// "kind:...") continue the previous one.
std::vector<std::string> split_settings(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) fail("--compare has an empty item: '{}'", list);
    const bool continues = !out.empty() && out.back().find(':') != std::string::npos && !starts_attention_setting(item);
    if (continues) out.back() += "," + item;
    else out.push_back(item);
  }
  return out;
}

AttentionSettings attention_settings(const RunFlags& o) {
  AttentionSettings a = parse_attention_setting(o.attention);
  const bool sparq = a.sparq && a.method == Method::sparq;
  if (sparq && o.attention == "sparq") a.sp = o.sp;  // bare "sparq" takes the --sparq-* flags
  else if (sparq) a.sp.mean_mixing = a.sp.mean_mixing || o.sp.mean_mixing;  // "sparq:8,mean" or --sparq-mean
  if (sparq) a.sp.validate();
  return a;
}

int run_eval(const RunFlags& o, const GenerateOptions& g, Model& model) {
  EvalOptions e;
  e.setting_names = o.compare.empty() ? std::vector<std::string>{o.attention} : split_settings(o.compare);
  for (const std::string& name : e.setting_names) {
    RunFlags one = o;
    one.attention = name;
    e.settings.push_back(attention_settings(one));
  }
  e.parallel = o.parallel;
  e.ctx = g.ctx;
  e.batch = g.batch;
  e.kv_type = g.kv_type;
  e.sampling = g.sampling;
  e.out_file = o.out_file;
  e.summary_json = o.summary_json;
  e.quiet = o.quiet;
  e.resume = o.resume;
  if (!o.perplexity_file.empty()) {
    run_perplexity(model, o.perplexity_file, e);
    return 0;
  }
  return run_batch_file(model, o.batch_file, e) == 0 ? 0 : 3;
}

int run(RunFlags& o) {
  const bool eval = !o.batch_file.empty() || !o.perplexity_file.empty();
  if (!o.batch_file.empty() && !o.perplexity_file.empty()) fail("give one of --batch and --perplexity");
  if (eval && (!o.prompt.empty() || !o.prompt_file.empty())) fail("--batch/--perplexity take no prompt");
  if (!eval && o.prompt.empty() == o.prompt_file.empty()) fail("give exactly one of -p/--prompt and -f/--file");
  if (!o.prompt_file.empty()) o.prompt = read_file(o.prompt_file);
  if (o.parallel < 0) fail("--parallel must be >= 0, got {}", o.parallel);
  if (o.model.empty()) fail("give a model with -m/--model (a directory or a .safetensors file)");
  if (o.threads < 0) fail("--threads must be >= 0, got {}", o.threads);
  if (o.n_predict < -1) fail("--n-predict must be >= -1, got {}", o.n_predict);
  if (o.ctx < 0) fail("--ctx-size must be >= 0, got {}", o.ctx);
  if (o.batch < 1) fail("--batch-size must be >= 1, got {}", o.batch);
  // More threads than this only fails thread creation inside OpenMP.
  if (o.threads > 1024) fail("--threads must be at most 1024, got {}", o.threads);
  if (o.sparq_group != "prob" && o.sparq_group != "logit")
    fail("--sparq-group must be prob or logit, got '{}'", o.sparq_group);
  o.sp.group = o.sparq_group == "logit" ? GroupRule::logit : GroupRule::prob;
  o.sp.validate();  // the --sparq-* flags, even when --attention does not use them
  const int threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  omp_set_num_threads(threads);

  GenerateOptions g;
  g.kv_type = parse_kv(o.kv_type, "--kv-type");
  g.attention = attention_settings(o);
  g.sampling = o.sampling;
  g.sampling.seed = o.seed >= 0 ? uint64_t(o.seed) : std::random_device{}();
  g.sampling.validate();
  g.n_predict = o.n_predict;
  g.batch = o.batch;
  g.ignore_eos = o.ignore_eos;
  int step = 0;
  if (o.verbose) g.on_step = [&step](const StepRecord& s) { print_step_line(stderr, step++, s); };

  const auto t0 = std::chrono::steady_clock::now();
  auto model = Model::load(o.model, LoadOptions{parse_format(o.dtype)});
  model->set_thread_governor(!o.fixed_threads);
  const ModelConfig& c = model->config();
  g.ctx = o.ctx > 0 ? o.ctx : default_context(model->kv_shape(c.max_position_embeddings, g.kv_type), available_memory());
  if (o.ctx == 0 && g.ctx < c.max_position_embeddings)
    fmt::print(stderr, "sparq-run: context {} (the trained {} does not fit in memory; -c sets it)\n", g.ctx,
               c.max_position_embeddings);
  const InterruptGuard ctrl_c;  // Ctrl-C from here on stops the run, keeping its statistics
  if (eval) {
    const int code = run_eval(o, g, *model);
    return interrupted() ? kInterruptedExit : code;
  }
  TraceLog trace;
  if (!o.trace_file.empty()) g.trace = &trace;
  const auto t_run = std::chrono::steady_clock::now();
  const std::vector<int> ids = model->tokenizer().encode(o.prompt, !o.no_bos);
  double t_tokenizer = seconds_since(t_run);
  if (g.trace) trace.add("tokenizer encode", "tokenizer", t_run, std::chrono::steady_clock::now());
  check_prompt_fits(ids.size(), g.ctx);
  check_kv_fits(model->kv_shape(g.ctx, g.kv_type), 1, available_memory());
  const size_t kv_bytes = KVCache::bytes_needed(model->kv_shape(g.ctx, g.kv_type));
  const size_t kv_plain = kv_bytes * 2 / 3;  // K and V without the transposed K copy
  RunInfo info;
  info.load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  info.threads = threads;
  info.attention = g.attention.describe();
  info.kv_type = o.kv_type;
  fmt::print(stderr, "sparq-run: {} | {} layers, hidden {}, heads {}/{} (head size {}), vocab {}, trained context {}\n",
             c.architecture, c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim,
             c.vocab_size, c.max_position_embeddings);
  fmt::print(stderr, "sparq-run: weights {:.1f} MiB ({}), KV cache {:.1f} MiB ({}, ctx {}; K and V {:.1f} MiB + transposed K {:.1f} MiB), threads {}, {} kernels\n",
             model->memory_bytes() / 1048576.0, o.dtype, kv_bytes / 1048576.0, o.kv_type, g.ctx,
             kv_plain / 1048576.0, (kv_bytes - kv_plain) / 1048576.0, threads,
             cpu_tier_name(cpu_tier()));
  if (g.ctx > c.max_position_embeddings)
    fmt::print(stderr, "warning: context {} exceeds the model's trained context {}\n", g.ctx,
               c.max_position_embeddings);
  fmt::print(stderr, "sparq-run: decode attention: {}, seed {}\n", info.attention, g.sampling.seed);

  TokenStreamer streamer(model->tokenizer());
  GenerateResult res = generate(*model, ids, g, [&](int id) {
    const auto t_push = std::chrono::steady_clock::now();
    const std::string piece = streamer.push(id);
    t_tokenizer += seconds_since(t_push);
    if (g.trace) trace.add("tokenizer decode", "tokenizer", t_push, std::chrono::steady_clock::now());
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return !interrupted();
  });
  const std::string tail = streamer.finish();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  print_timings(stderr, info, res);
  print_kv_table(stderr, res);
  print_memory(stderr, model->memory_bytes(), kv_bytes);
  if (o.profile) print_profile(stderr, res, t_tokenizer, seconds_since(t_run));
  if (g.trace) trace.write(o.trace_file);
  if (!o.stats_json.empty()) write_stats_json(o.stats_json, info, res);
  return interrupted() ? kInterruptedExit : 0;
}

// GOMP_SPINCOUNT unless the environment sets a wait policy (short_omp_spin).
constexpr const char* kOmpSpinCount = "2000";

struct BenchFlags {
  std::string kernel = "model", settings = "dense,sparq:8,sparq:16", format = "md", text_file;
  std::vector<std::string> dtypes = {"bf16"};
  std::vector<std::string> kv_types = {"bf16"};
  std::vector<int> threads = {0};
  AttentionBenchOptions attn;
  ModelBenchOptions model;
  int reps = 0;
  double bandwidth_gbs = 0;
};

void add_bench_flags(CLI::App& bench, BenchFlags& b) {
  bench.get_help_ptr()->group("help");
  bench.footer("--cpu TIER (or SPARQ_CPU) goes before the subcommand: sparq-run --cpu avx2 bench ...");

  const std::string what = "what to bench and output";
  bench.add_option("--kernel", b.kernel, "model (pp/tg tests of a model, like llama-bench), attention or matmul")
      ->capture_default_str()->group(what);
  bench.add_option("-r,--repetitions", b.reps, "timed repetitions; 0: the bench's own (model 5, attention 10, matmul 20)")
      ->capture_default_str()->group(what);
  bench.add_option("-o,--output", b.format, "md, csv, json or jsonl")->capture_default_str()->group(what);
  bench.add_option("--bandwidth", b.bandwidth_gbs, "read bandwidth in GB/s; 0: measure it")->capture_default_str()->group(what);

  const std::string model = "model bench (--kernel model)";
  bench.add_option("-m,--model", b.model.model, "model directory or .safetensors file")->type_name("PATH")->group(model);
  bench.add_option("--shape", b.model.shape,
                   "instead of -m, random bf16 weights of a real shape: llama-3.2-1b, llama-3.2-3b, "
                   "llama-3.1-8b, llama-2-7b, mistral-7b, NAME:key=value,... or a config.json")
      ->type_name("NAME")->group(model);
  bench.add_option("-p,--n-prompt", b.model.prompt_lens, "prompt lengths of the pp tests; 0: none")
      ->delimiter(',')->capture_default_str()->group(model);
  bench.add_option("-n,--n-gen", b.model.gen_lens, "tokens generated in the tg tests; 0: none")
      ->delimiter(',')->capture_default_str()->group(model);
  bench.add_option("-d,--n-depth", b.model.depths, "cache depths filled first, untimed")
      ->delimiter(',')->capture_default_str()->group(model);
  bench.add_option("--parallel", b.model.parallel, "sequences run together")->delimiter(',')->capture_default_str()->group(model);
  bench.add_option("-b,--batch-size", b.model.batch, "prompt rows per forward pass")->capture_default_str()->group(model);
  bench.add_option("-f,--file", b.text_file, "take the tokens from this text; empty: pseudo-random ids")
      ->type_name("FILE")->group(model);
  bench.add_option("--dtype", b.dtypes, "weight formats, f32, bf16, q8_0 or q4_0, one model each in turn")
      ->delimiter(',')->capture_default_str()->group(model);

  const std::string attn = "attention bench (--kernel attention)";
  bench.add_option("-S,--seq-lens", b.attn.seq_lens, "cache lengths")->delimiter(',')->capture_default_str()->group(attn);
  bench.add_option("--head-dims", b.attn.head_dims, "head sizes")->delimiter(',')->capture_default_str()->group(attn);
  bench.add_option("--groups", b.attn.groups, "query heads per KV head")->delimiter(',')->capture_default_str()->group(attn);
  bench.add_option("--kv-heads", b.attn.n_kv_heads, "KV heads per layer")->capture_default_str()->group(attn);

  const std::string kv = "attention and KV cache (model and attention benches)";
  bench.add_option("--attention", b.settings, "settings, e.g. dense,sparq:8,sparq:r=8,k=512")
      ->type_name("LIST")->capture_default_str()->group(kv);
  bench.add_option("--kv-type", b.kv_types, "KV cache types, f32, bf16 or q8_0")
      ->delimiter(',')->capture_default_str()->group(kv);

  const std::string cpu = "threads and CPU";
  bench.add_option("-t,--threads", b.threads, "threads, a list for the model bench; 0: all cores")
      ->delimiter(',')->capture_default_str()->group(cpu);
  bench.add_flag("--fixed-threads", b.model.fixed_threads, "model bench: decode on exactly -t threads (see the run's flag)")
      ->group(cpu);
}

int run_model_bench_flags(BenchFlags& b) {
  ModelBenchOptions& m = b.model;
  m.weight_formats.clear();
  for (const std::string& f : b.dtypes) m.weight_formats.push_back(parse_format(f));
  m.kv_types.clear();
  for (const std::string& t : b.kv_types) m.kv_types.push_back(parse_kv(t, "--kv-type"));
  m.settings = split_settings(b.settings);
  m.threads = b.threads;
  if (b.reps > 0) m.reps = b.reps;
  m.format = b.format;
  m.bandwidth_gbs = b.bandwidth_gbs;
  if (!b.text_file.empty()) {
    m.text = read_file(b.text_file);
    m.text_name = b.text_file;
  }
  return run_model_bench(m);
}

int run_bench(BenchFlags& b) {
  if (b.reps < 0) fail("--repetitions must be >= 0, got {}", b.reps);
  if (b.kernel == "model") return run_model_bench_flags(b);
  if (b.threads.size() != 1) fail("--kernel {} takes one -t", b.kernel);
  if (b.threads[0] < 0) fail("--threads must be >= 0, got {}", b.threads[0]);
  const int threads = b.threads[0] > 0 ? b.threads[0] : omp_get_num_procs();
  omp_set_num_threads(threads);
  if (b.kernel == "matmul") {
    MatmulBenchOptions m;
    m.threads = threads;
    if (b.reps > 0) m.reps = b.reps;
    m.format = b.format;
    return run_matmul_bench(m);
  }
  if (b.kernel != "attention") fail("--kernel must be model, attention or matmul, got '{}'", b.kernel);
  b.attn.format = b.format;
  b.attn.kv_types.clear();
  for (const std::string& t : b.kv_types) b.attn.kv_types.push_back(parse_kv(t, "--kv-type"));
  b.attn.settings = split_settings(b.settings);
  b.attn.threads = threads;
  b.attn.bandwidth_gbs = b.bandwidth_gbs;
  if (b.reps > 0) b.attn.reps = b.reps;
  return run_attention_bench(b.attn);
}

}  // namespace

// libgomp reads its wait policy once, when it is loaded, and by default a
// thread waiting for its team spins ~300000 times before it sleeps. Prompt
// rows run on OpenMP's threads (oneDNN's products, the prompt's attention);
// after a prompt, that spin would hold a core the decode's work team needs,
// and when another process holds a core it keeps ours busy while the thread
// it waits for sits in the run queue: see docs/benchmarks.md's "Busy machines". Unless
// the user chose a policy, start again with a short spin.
void short_omp_spin(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", kOmpSpinCount, 1);
  execv("/proc/self/exe", argv);  // only returns on failure: go on with the default
}

int main(int argc, char** argv) {
  short_omp_spin(argv);
  CLI::App app{"sparq-run: Llama inference on the CPU with SparQ attention for decoding"};
  app.set_version_flag("--version", [] {
    return fmt::format("sparq-run 0.1 ({}), {} kernels (best on this CPU: {}), {}", kBuildCommit,
                       cpu_tier_name(cpu_tier()), cpu_tier_name(best_cpu_tier()), cpu_model_name());
  });
  RunFlags flags;
  add_run_flags(app, flags);
  std::string cpu;
  app.add_option("--cpu", cpu, "kernel tier, at most the CPU's best: " + cpu_tier_names() + " (default: SPARQ_CPU, else the best)")
      ->type_name("TIER")->group("threads and CPU");
  BenchFlags bench_flags;
  CLI::App* bench = app.add_subcommand("bench", "benchmarks: a model's prefill and decode speed (like llama-bench), or --kernel attention|matmul");
  add_bench_flags(*bench, bench_flags);
  bench->fallthrough();  // --cpu after "bench" too
  try {
    app.parse(argc, argv);
    check_cpu_env();
    if (!cpu.empty()) set_cpu_tier(parse_cpu_tier(cpu));
    if (bench->parsed()) return run_bench(bench_flags);
    return run(flags);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const sparq::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
