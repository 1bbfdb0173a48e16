// The BPE model: a pre-token becomes one symbol per character (or byte
// fallback / unk), then the adjacent pair with the lowest merge rank is merged,
// leftmost first, until no pair has a merge. A heap over a linked list keeps
// this O(n log n), which matters when a whole SentencePiece-style prompt is one
// pre-token.
#include <algorithm>
#include <queue>

#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq::tok {

namespace {

uint64_t pair_key(int left, int right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }

std::optional<std::string> opt_string(const Json& j, const char* key) {
  const Json* v = field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) fail("model: \"{}\" must be a string or null", key);
  return v->get<std::string>();
}

// A merge is "a b" in older files and ["a", "b"] in newer ones.
std::pair<std::string, std::string> parse_merge(const Json& m, size_t i) {
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      fail("model.merges[{}] \"{}\" is not two tokens separated by one space", i, s);
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  fail("model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", i);
}

}  // namespace

BpeModel::BpeModel(const std::vector<std::pair<std::string, int>>& vocab,
                   const std::vector<MergeRule>& merges, BpeOptions opt)
    : opt_(std::move(opt)) {
  int max_id = -1;
  for (const auto& entry : vocab) max_id = std::max(max_id, entry.second);
  tokens_.resize(size_t(max_id + 1));
  present_.assign(size_t(max_id + 1), 0);
  vocab_.reserve(vocab.size());
  for (const auto& [text, id] : vocab) {
    vocab_.emplace(text, id);
    if (!present_[size_t(id)]) {
      tokens_[size_t(id)] = text;
      present_[size_t(id)] = 1;
    }
  }
  merges_.reserve(merges.size());
  for (const MergeRule& m : merges) merges_[pair_key(m.left, m.right)] = m;  // later ones win
  for (int b = 0; b < 256; ++b) byte_ids_[b] = id_of(fmt::format("<0x{:02X}>", b));
  if (opt_.unk_token) {
    unk_id_ = id_of(*opt_.unk_token);
    if (unk_id_ < 0) fail("model: unk_token \"{}\" is not in the vocabulary", *opt_.unk_token);
  }
}

BpeModel BpeModel::from_json(const Json& model) {
  if (!model.is_object()) fail("\"model\" must be a JSON object");
  const Json* type = field(model, "type");
  if (type && (!type->is_string() || type->get<std::string>() != "BPE"))
    fail("unsupported model type {} (only BPE is supported)", type->dump());
  if (!type && !field(model, "merges")) fail("model has no \"type\" and no \"merges\"");
  const Json& vj = need(model, "vocab", "model");
  if (!vj.is_object()) fail("model.vocab must be an object of token: id");
  std::vector<std::pair<std::string, int>> vocab;
  vocab.reserve(vj.size());
  for (auto it = vj.begin(); it != vj.end(); ++it) {
    if (!it->is_number_integer()) fail("model.vocab: id of \"{}\" is not an integer", it.key());
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) fail("model.vocab: id {} of \"{}\" is out of range", id, it.key());
    vocab.emplace_back(it.key(), int(id));
  }
  BpeOptions opt;
  opt.unk_token = opt_string(model, "unk_token");
  opt.byte_fallback = opt_bool(model, "byte_fallback", false, "model");
  opt.fuse_unk = opt_bool(model, "fuse_unk", false, "model");
  opt.ignore_merges = opt_bool(model, "ignore_merges", false, "model");
  opt.subword_prefix = opt_string(model, "continuing_subword_prefix").value_or("");
  opt.word_suffix = opt_string(model, "end_of_word_suffix").value_or("");
  if (const Json* d = field(model, "dropout"); d && (!d->is_number() || d->get<double>() != 0.0))
    fail("model: BPE dropout is random and not supported");

  const std::string prefix = opt.subword_prefix;
  BpeModel m(vocab, {}, std::move(opt));
  auto id_or_fail = [&](const std::string& t, size_t i) {
    const int id = m.id_of(t);
    if (id < 0) fail("model.merges[{}]: \"{}\" is not in the vocabulary", i, t);
    return id;
  };
  if (const Json* mj = field(model, "merges")) {
    if (!mj->is_array()) fail("model.merges must be a list");
    m.merges_.reserve(mj->size());
    for (size_t i = 0; i < mj->size(); ++i) {
      const auto [a, b] = parse_merge((*mj)[i], i);
      const MergeRule r{id_or_fail(a, i), id_or_fail(b, i), int(i),
                        id_or_fail(a + b.substr(std::min(prefix.size(), b.size())), i)};
      m.merges_[pair_key(r.left, r.right)] = r;  // later ones win, as in tokenizers
    }
  }
  return m;
}

int BpeModel::id_of(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::token(int id) const {
  return id >= 0 && id < size() && present_[size_t(id)] ? &tokens_[size_t(id)] : nullptr;
}

const MergeRule* BpeModel::merge(int left, int right) const {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::tokenize(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (opt_.ignore_merges) {
    if (const int id = id_of(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  struct Symbol {
    int id, prev, next;
    bool gone;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto add = [&](int id) {
    const int n = int(sym.size());
    if (n) sym.back().next = n;
    sym.push_back({id, n - 1, -1, false});
  };

  bool unk = false;  // an unk symbol is pending (fuse_unk grows it)
  std::string key;
  for (size_t i = 0; i < word.size();) {
    size_t j = i;
    utf8::next(word, j);
    key.assign(i > 0 ? opt_.subword_prefix : std::string());
    key.append(word.substr(i, j - i));
    if (j == word.size()) key.append(opt_.word_suffix);
    i = j;
    if (const int id = id_of(key); id >= 0) {
      if (unk) add(unk_id_);
      unk = false;
      add(id);
      continue;
    }
    if (opt_.byte_fallback &&
        std::all_of(key.begin(), key.end(), [&](char c) { return byte_ids_[uint8_t(c)] >= 0; })) {
      // tokenizers adds these without flushing a pending unk first; so do we.
      for (char c : key) add(byte_ids_[uint8_t(c)]);
      continue;
    }
    if (unk_id_ >= 0) {
      if (unk && !opt_.fuse_unk) add(unk_id_);
      unk = true;
    }
  }
  if (unk) add(unk_id_);

  struct Candidate {
    int rank, pos, result;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  for (size_t k = 0; k + 1 < sym.size(); ++k)
    if (const MergeRule* m = merge(sym[k].id, sym[k + 1].id))
      queue.push({m->rank, int(k), m->result});
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& s = sym[size_t(top.pos)];
    if (s.gone || s.next < 0) continue;
    Symbol& right = sym[size_t(s.next)];
    const MergeRule* m = merge(s.id, right.id);
    if (!m || m->result != top.result) continue;  // stale: a neighbour merged first
    s.id = top.result;
    right.gone = true;
    s.next = right.next;
    if (s.next >= 0) sym[size_t(s.next)].prev = top.pos;
    if (s.prev >= 0)
      if (const MergeRule* pm = merge(sym[size_t(s.prev)].id, s.id))
        queue.push({pm->rank, s.prev, pm->result});
    if (s.next >= 0)
      if (const MergeRule* nm = merge(s.id, sym[size_t(s.next)].id))
        queue.push({nm->rank, top.pos, nm->result});
  }
  for (const Symbol& s : sym)
    if (!s.gone) out.push_back(s.id);
}

}  // namespace sparq::tok
