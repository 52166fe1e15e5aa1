#include "tailor-rag/cxx/faiss_bridge.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_io.h>

#include <omp.h>

#include <string>

namespace tailor {

namespace {

faiss::Index::idx_t count(size_t values, int dim) {
  if (dim <= 0 || values % static_cast<size_t>(dim) != 0) {
    throw std::invalid_argument("vector data is not a whole number of rows of the index dimension");
  }
  return static_cast<faiss::Index::idx_t>(values / static_cast<size_t>(dim));
}

// The HNSW graph inside an id map, if this index is one.
faiss::IndexHNSW* hnsw_of(faiss::Index* index) {
  if (auto* map = dynamic_cast<faiss::IndexIDMap*>(index)) {
    return dynamic_cast<faiss::IndexHNSW*>(map->index);
  }
  return dynamic_cast<faiss::IndexHNSW*>(index);
}

}  // namespace

std::unique_ptr<FaissIndex> new_flat_ip(int32_t dim) {
  auto* inner = new faiss::IndexFlatIP(dim);
  auto* map = new faiss::IndexIDMap2(inner);
  map->own_fields = true;
  return std::unique_ptr<FaissIndex>(new FaissIndex{std::unique_ptr<faiss::Index>(map)});
}

std::unique_ptr<FaissIndex> new_hnsw_ip(int32_t dim, int32_t m, int32_t ef_construction) {
  auto* inner = new faiss::IndexHNSWFlat(dim, m, faiss::METRIC_INNER_PRODUCT);
  inner->hnsw.efConstruction = ef_construction;
  auto* map = new faiss::IndexIDMap(inner);
  map->own_fields = true;
  return std::unique_ptr<FaissIndex>(new FaissIndex{std::unique_ptr<faiss::Index>(map)});
}

namespace {

// Searches of fewer queries than this run without an OpenMP team.
constexpr faiss::Index::idx_t kParallelSearchQueries = 16;

// Sets this thread's OpenMP team size for one call, and restores it.
class OmpThreadsForCall {
 public:
  explicit OmpThreadsForCall(int threads) : previous_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~OmpThreadsForCall() { omp_set_num_threads(previous_); }
  OmpThreadsForCall(const OmpThreadsForCall&) = delete;
  OmpThreadsForCall& operator=(const OmpThreadsForCall&) = delete;

 private:
  int previous_;
};

}  // namespace

void add_with_ids(FaissIndex& index, rust::Slice<const float> vectors, rust::Slice<const int64_t> ids) {
  auto n = count(vectors.size(), index.index->d);
  if (static_cast<size_t>(n) != ids.size()) {
    throw std::invalid_argument("number of ids differs from number of vectors");
  }
  index.index->add_with_ids(n, vectors.data(), reinterpret_cast<const faiss::Index::idx_t*>(ids.data()));
}

void search(const FaissIndex& index, rust::Slice<const float> queries, int64_t k, int32_t ef_search,
            rust::Slice<float> scores, rust::Slice<int64_t> ids) {
  auto n = count(queries.size(), index.index->d);
  if (k <= 0 || scores.size() != static_cast<size_t>(n * k) || ids.size() != scores.size()) {
    throw std::invalid_argument("result buffers must hold k results per query");
  }
  if (auto* hnsw = hnsw_of(index.index.get())) {
    hnsw->hnsw.efSearch = ef_search > k ? ef_search : static_cast<int>(k);
  }
  // A few queries run on the calling thread alone: waking OpenMP's team
  // costs more than the search, and the team then spins on the cores the
  // encoder needs for the next query.
  OmpThreadsForCall threads(n < kParallelSearchQueries ? 1 : omp_get_max_threads());
  index.index->search(n, queries.data(), k, scores.data(), reinterpret_cast<faiss::Index::idx_t*>(ids.data()));
}

int64_t remove_ids(FaissIndex& index, rust::Slice<const int64_t> ids) {
  faiss::IDSelectorArray selector(ids.size(), reinterpret_cast<const faiss::Index::idx_t*>(ids.data()));
  return static_cast<int64_t>(index.index->remove_ids(selector));
}

int64_t ntotal(const FaissIndex& index) { return static_cast<int64_t>(index.index->ntotal); }

int32_t dimension(const FaissIndex& index) { return static_cast<int32_t>(index.index->d); }

void write_index(const FaissIndex& index, rust::Str path) {
  faiss::write_index(index.index.get(), std::string(path).c_str());
}

std::unique_ptr<FaissIndex> read_index(rust::Str path) {
  faiss::Index* loaded = faiss::read_index(std::string(path).c_str());
  return std::unique_ptr<FaissIndex>(new FaissIndex{std::unique_ptr<faiss::Index>(loaded)});
}

}  // namespace tailor
