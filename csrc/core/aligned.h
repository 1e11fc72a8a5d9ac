// 64-byte-aligned storage for everything that vector and tile loads read. Knows nothing of Python.
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace xnornet {

// Allocator for buffers that tile and vector loads read: 64-byte (cache line) alignment. AMX tile
// rows that straddle two lines load ~3x slower (measured), and malloc only promises 16 bytes: a
// float map at 16 bytes past a line splits every 512-bit load and store of the epilogues (with
// the maps aligned too, the downsampling layers ran 5-8% faster).
template <class T>
struct CacheAligned {
    using value_type = T;
    static constexpr std::align_val_t kAlign{64};
    CacheAligned() = default;
    template <class U>
    CacheAligned(const CacheAligned<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
    void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
    template <class U>
    bool operator==(const CacheAligned<U>&) const { return true; }
    template <class U>
    bool operator!=(const CacheAligned<U>&) const { return false; }
};
template <class T>
using aligned_vector = std::vector<T, CacheAligned<T>>;

}  // namespace xnornet
