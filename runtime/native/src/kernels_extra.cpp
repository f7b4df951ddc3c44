// Layout, update, one_hot, prelu and lrn kernels (see runtime/kernels/*.py for the semantics).
#include "kernel.h"

namespace castml {

void register_extra(KernelTable& t) {
  (void)t;
}

}  // namespace castml
