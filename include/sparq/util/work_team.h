// The parallel loops of our kernels. A decode step runs dozens of short loops
// (matrix products, attention), and an OpenMP loop ends at a barrier that
// waits for every thread to arrive: when another process holds a core, the
// thread queued behind it stalls each one. Here threads claim a loop's items
// as they come free, and the loop ends when its items are done, not when
// every thread has looked in: a thread the OS holds back joins whichever loop
// is current when it runs again, or none, and only an item it already holds
// is waited for. Idle threads spin a little, then sleep.
#pragma once
#include <type_traits>

namespace sparq {

// A non-owning reference to a callable taking an item index.
class ItemFn {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, ItemFn>)
  ItemFn(const F& f) : obj_(&f), call_([](const void* o, int i) { (*static_cast<const F*>(o))(i); }) {}
  void operator()(int i) const { call_(obj_, i); }

 private:
  const void* obj_;
  void (*call_)(const void*, int);
};

// Threads a loop started here would run on: omp_get_max_threads() (the -t
// setting), or 1 inside an item or an OpenMP region.
int team_threads();

// Runs f(i) for every i in [0, n) on up to `threads` threads, the caller's
// among them, and returns once all are done. After an item throws, the items
// not yet started are skipped and the first exception is rethrown here. Inside
// an item (or an OpenMP region) it runs the items in order on this thread.
void parallel_items(int n, int threads, ItemFn f);

template <class F>
void parallel_items(int n, F&& f) {
  parallel_items(n, team_threads(), ItemFn(f));
}

}  // namespace sparq
