// Counter-based random ops and einsum (see runtime/kernels/*.py for the semantics).
#include "kernel.h"

namespace castml {

void register_random(KernelTable& t) {
  (void)t;
}

}  // namespace castml
