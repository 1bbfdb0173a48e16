// The result tables of `sparq-run bench`: one set of rows printed as markdown
// for people, or as CSV, JSON or JSONL for scripts (scripts/plot_bench.py).
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sparq {

using BenchRow = nlohmann::ordered_json;

// A markdown column: its header and how a row shows in it.
struct BenchColumn {
  std::string header;
  std::function<std::string(const BenchRow&)> cell;
};

// field as text: "-" when null, integers as they are, other numbers with
// `digits` decimals, times `scale`, then `suffix`.
BenchColumn bench_column(std::string header, std::string field, int digits = 2, double scale = 1.0,
                         std::string suffix = "");
// "mean ± sd" of two fields.
BenchColumn bench_column_pm(std::string header, std::string mean, std::string sd, int digits);

struct BenchTable {
  BenchRow meta;                    // run-wide facts: top level of JSON, in every JSONL line
  std::vector<std::string> notes;   // lines above the markdown table (stderr for other formats)
  std::vector<std::string> footer;  // lines below it (likewise)
  std::vector<BenchColumn> columns; // markdown
  std::vector<BenchRow> rows;       // every field, in order: the CSV columns and JSON rows
};

// What identifies a run, for comparing results across builds and machines,
// into the table's meta (build_commit, cpu, logical_cpus, kernels: avx512 or
// portable, test_time: UTC) and as one line, its first note.
void add_run_facts(BenchTable& t);

// "md" or "markdown", "csv", "json", "jsonl"; returns the canonical name
// ("markdown" for md). Throws Error naming the bad format.
std::string bench_format(const std::string& format);

// Prints the table in the format (canonical or not). Machine formats get
// only data on out; their notes and footer go to stderr.
void print_bench_table(std::FILE* out, const BenchTable& table, const std::string& format);

struct MeanSd {
  double mean = 0, sd = 0;  // sd: sample standard deviation (0 for one value)
};
MeanSd mean_sd(const std::vector<double>& xs);

}  // namespace sparq
