// The documentation against the tree and the binary: every relative link in
// README.md, docs/ and the folders' READMEs points at a file that exists, the
// front page stays short, and docs/usage.md names exactly the long flags that
// `sparq-run --help` and `sparq-run bench --help` print.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli_run.h"

namespace fs = std::filesystem;
using namespace sparq::test;

namespace {

// tests/data is two levels below the repository's root.
fs::path repo_root() { return fs::path(SPARQ_TEST_DATA_DIR).parent_path().parent_path(); }

// The markdown files whose links are checked.
std::vector<fs::path> markdown_files() {
  const fs::path root = repo_root();
  std::vector<fs::path> files = {root / "README.md", root / "tests" / "README.md"};
  for (const fs::path& dir : {root / "docs", root / "src"})
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.is_regular_file() && e.path().extension() == ".md") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// The text outside fenced code blocks, where [..](..) is a link.
std::string prose(const std::string& text) {
  std::istringstream in(text);
  std::string out;
  bool fenced = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("```", 0) == 0) {
      fenced = !fenced;
      continue;
    }
    if (!fenced) out += line + "\n";
  }
  return out;
}

// Targets of [text](target) and ![alt](target), without a "title".
std::vector<std::string> link_targets(const std::string& text) {
  static const std::regex link(R"(\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\))");
  std::vector<std::string> out;
  const std::string p = prose(text);
  for (auto it = std::sregex_iterator(p.begin(), p.end(), link); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1]);
  return out;
}

bool is_external(const std::string& t) {
  return t.rfind("http://", 0) == 0 || t.rfind("https://", 0) == 0 || t.rfind("mailto:", 0) == 0;
}

// Long flags named in a text: "--name" not preceded by a letter, digit or '-'.
std::set<std::string> long_flags(const std::string& text) {
  std::set<std::string> out;
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; };
  for (size_t i = text.find("--"); i != std::string::npos; i = text.find("--", i + 1)) {
    if (i > 0 && word(text[i - 1])) continue;
    size_t j = i + 2;
    if (j >= text.size() || !std::islower(static_cast<unsigned char>(text[j]))) continue;
    while (j < text.size() && (std::islower(static_cast<unsigned char>(text[j])) ||
                               std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == '-'))
      ++j;
    std::string flag = text.substr(i, j - i);
    while (flag.back() == '-') flag.pop_back();
    out.insert(flag);
    i = j - 1;
  }
  return out;
}

// The long flags of one --help: the names in the left column of the lines
// that start with "  -" (e.g. "  -m,--model PATH   ...").
std::set<std::string> help_flags(const std::string& help) {
  std::set<std::string> out;
  std::istringstream in(help);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("  -", 0) != 0) continue;
    std::string names = line.substr(2, line.find(' ', 2) - 2);
    std::istringstream parts(names);
    for (std::string n; std::getline(parts, n, ',');)
      if (n.rfind("--", 0) == 0) out.insert(n);
  }
  return out;
}

std::string help_of(const std::string& args) {
  const Result r = run(args);
  INFO(args << " stderr: " << r.err);
  REQUIRE(r.code == 0);
  return r.out;
}

}  // namespace

TEST_CASE("docs: every relative link points at a file that exists", "[docs]") {
  const std::vector<fs::path> files = markdown_files();
  REQUIRE(std::count(files.begin(), files.end(), repo_root() / "docs" / "usage.md") == 1);
  size_t checked = 0;
  for (const fs::path& file : files) {
    for (std::string target : link_targets(read_text(file.string()))) {
      if (is_external(target) || target[0] == '#') continue;
      target = target.substr(0, target.find('#'));
      const fs::path resolved = file.parent_path() / target;
      INFO(file.string() << " links to " << target);
      CHECK(fs::exists(resolved));
      ++checked;
    }
  }
  CHECK(checked >= 20);  // the front page and docs/ link to each other: the parse found them
}

TEST_CASE("docs: the README is a front page of at most 12 KB", "[docs]") {
  CHECK(fs::file_size(repo_root() / "README.md") <= 12 * 1024);
  // the two commands CI runs, unchanged
  const std::string readme = read_text((repo_root() / "README.md").string());
  CHECK(readme.find("scripts/setup.sh && scripts/build.sh && build/sparq-run -m ../shared/models/llama-27m-bpe8k "
                    "-p \"The quick brown fox\" -n 64") != std::string::npos);
  CHECK(readme.find("\nscripts/test.sh\n") != std::string::npos);
}

TEST_CASE("docs: usage.md names exactly the flags of --help and bench --help", "[docs]") {
  const std::string run_help = help_of("--help"), bench_help = help_of("bench --help");
  // grouped, one line per option
  for (const char* group : {"model and context:", "generation and sampling:", "attention and SparQ:", "evaluation:",
                            "output and statistics:", "threads and CPU:"}) {
    INFO(group);
    CHECK(run_help.find(std::string("\n") + group + "\n") != std::string::npos);
  }
  CHECK(bench_help.find("\nthreads and CPU:\n") != std::string::npos);
  for (const std::string* help : {&run_help, &bench_help}) {
    std::istringstream in(*help);
    for (std::string line; std::getline(in, line);) {
      INFO("help line: " << line);
      CHECK(line.rfind("      ", 0) != 0);  // no description wrapped onto a line of its own
    }
  }

  std::set<std::string> in_help = help_flags(run_help);
  const std::set<std::string> bench_flags = help_flags(bench_help);
  REQUIRE(in_help.count("--model"));
  REQUIRE(in_help.count("--cpu"));
  REQUIRE(bench_flags.count("--n-depth"));
  in_help.insert(bench_flags.begin(), bench_flags.end());

  const std::set<std::string> in_usage = long_flags(read_text((repo_root() / "docs" / "usage.md").string()));
  for (const std::string& f : in_help) {
    INFO(f << " is in --help but not in docs/usage.md");
    CHECK(in_usage.count(f));
  }
  for (const std::string& f : in_usage) {
    INFO(f << " is in docs/usage.md but in neither --help");
    CHECK(in_help.count(f));
  }
}
