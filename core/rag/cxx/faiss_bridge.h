// The C++ half of tailor-rag's faiss bridge: one owning handle around a
// faiss::Index with 64-bit ids. faiss exceptions surface in Rust as errors.
#pragma once
#include <cstdint>
#include <memory>
#include <faiss/Index.h>

#include "rust/cxx.h"

namespace tailor {

struct FaissIndex {
  std::unique_ptr<faiss::Index> index;
};

std::unique_ptr<FaissIndex> new_flat_ip(int32_t dim);
std::unique_ptr<FaissIndex> new_hnsw_ip(int32_t dim, int32_t m, int32_t ef_construction);
void add_with_ids(FaissIndex& index, rust::Slice<const float> vectors, rust::Slice<const int64_t> ids);
void search(const FaissIndex& index, rust::Slice<const float> queries, int64_t k, int32_t ef_search,
            rust::Slice<float> scores, rust::Slice<int64_t> ids);
int64_t remove_ids(FaissIndex& index, rust::Slice<const int64_t> ids);
int64_t ntotal(const FaissIndex& index);
int32_t dimension(const FaissIndex& index);
void write_index(const FaissIndex& index, rust::Str path);
std::unique_ptr<FaissIndex> read_index(rust::Str path);

}  // namespace tailor
