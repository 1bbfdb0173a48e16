#include "sparq/bench/bench_table.h"

#include <omp.h>

#include <cmath>
#include <ctime>

#include <fmt/ranges.h>

#include "sparq/util/build_info.h"
#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq {
namespace {

std::string number(const BenchRow& v, int digits, double scale) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer() && scale == 1.0) return v.dump();
  if (v.is_number()) return fmt::format("{:.{}f}", v.get<double>() * scale, digits);
  return v.dump();
}

// Strings and arrays (as JSON text) quoted, since they may hold commas.
std::string csv_cell(const BenchRow& v) {
  if (v.is_null()) return "";
  if (!v.is_string() && !v.is_structured()) return v.dump();
  std::string s = "\"";
  for (char c : v.is_string() ? v.get<std::string>() : v.dump()) s += c == '"' ? std::string("\"\"") : std::string(1, c);
  return s + "\"";
}

void print_lines(std::FILE* f, const std::vector<std::string>& lines) {
  for (const std::string& l : lines) fmt::print(f, "{}\n", l);
}

}  // namespace

BenchColumn bench_column(std::string header, std::string field, int digits, double scale, std::string suffix) {
  return {std::move(header), [field = std::move(field), digits, scale, suffix = std::move(suffix)](const BenchRow& r) {
            const BenchRow& v = r.contains(field) ? r[field] : BenchRow();
            return v.is_null() ? std::string("-") : number(v, digits, scale) + suffix;
          }};
}

BenchColumn bench_column_pm(std::string header, std::string mean, std::string sd, int digits) {
  return {std::move(header), [mean = std::move(mean), sd = std::move(sd), digits](const BenchRow& r) {
            return number(r.value(mean, BenchRow()), digits, 1.0) + " ± " + number(r.value(sd, BenchRow()), digits, 1.0);
          }};
}

void add_run_facts(BenchTable& t) {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &utc);
  const std::string cpu = cpu_model_name(), kernels = cpu_tier_name(cpu_tier());
  const int cpus = omp_get_num_procs();
  t.meta["build_commit"] = kBuildCommit;
  t.meta["cpu"] = cpu;
  t.meta["logical_cpus"] = cpus;
  t.meta["kernels"] = kernels;
  t.meta["test_time"] = when;
  t.notes.insert(t.notes.begin(),
                 fmt::format("sparq-run {} on {} ({} logical CPUs, {} kernels), {}", kBuildCommit, cpu, cpus, kernels, when));
}

std::string bench_format(const std::string& format) {
  if (format == "md" || format == "markdown") return "markdown";
  if (format == "csv" || format == "json" || format == "jsonl") return format;
  fail("bench: output format must be md, csv, json or jsonl, got '{}'", format);
}

void print_bench_table(std::FILE* out, const BenchTable& t, const std::string& format) {
  const std::string f = bench_format(format);
  if (f == "markdown") {
    print_lines(out, t.notes);
    if (!t.notes.empty()) fmt::print(out, "\n");
    std::string head = "|", rule = "|";
    for (const BenchColumn& c : t.columns) {
      head += " " + c.header + " |";
      rule += "---|";
    }
    fmt::print(out, "{}\n{}\n", head, rule);
    for (const BenchRow& r : t.rows) {
      std::vector<std::string> cells;
      for (const BenchColumn& c : t.columns) cells.push_back(c.cell(r));
      fmt::print(out, "| {} |\n", fmt::join(cells, " | "));
    }
    if (!t.footer.empty()) fmt::print(out, "\n");
    print_lines(out, t.footer);
    return;
  }
  print_lines(stderr, t.notes);
  if (f == "json") {
    BenchRow j = t.meta;
    j["rows"] = t.rows;
    fmt::print(out, "{}\n", j.dump(2));
  } else if (f == "jsonl") {
    for (const BenchRow& r : t.rows) {
      BenchRow line = t.meta;
      line.update(r);
      fmt::print(out, "{}\n", line.dump());
    }
  } else if (!t.rows.empty()) {  // csv: the first row's fields are the columns
    std::vector<std::string> keys;
    for (const auto& [key, v] : t.rows[0].items()) keys.push_back(key);
    fmt::print(out, "{}\n", fmt::join(keys, ","));
    for (const BenchRow& r : t.rows) {
      std::vector<std::string> cells;
      for (const std::string& key : keys) cells.push_back(csv_cell(r.value(key, BenchRow())));
      fmt::print(out, "{}\n", fmt::join(cells, ","));
    }
  }
  print_lines(stderr, t.footer);
  std::fflush(out);
}

MeanSd mean_sd(const std::vector<double>& xs) {
  MeanSd m;
  if (xs.empty()) return m;
  for (double x : xs) m.mean += x;
  m.mean /= double(xs.size());
  double var = 0;
  for (double x : xs) var += (x - m.mean) * (x - m.mean);
  m.sd = xs.size() > 1 ? std::sqrt(var / double(xs.size() - 1)) : 0.0;
  return m;
}

}  // namespace sparq
