// The little JSON the runtime needs: validating pytree structures stored in a model
// (`["tuple",[["*"]]]`, the format of runtime/pytree.py) and quoting strings for the entry
// description the C API hands to Python. Depth-limited, so hostile input cannot recurse deeply.
#pragma once

#include <string>

namespace castml {

// Number of leaves of a pytree structure in runtime.pytree's JSON form; throws
// std::runtime_error("...") when the text is not such a structure. `tuple_arity` receives the
// number of children when the root is a tuple, -1 otherwise.
int pytree_num_leaves(const std::string& json, int* tuple_arity);

// `s` as a JSON string literal (with quotes); non-ASCII bytes pass through (the input is UTF-8).
std::string json_quote(const std::string& s);

}  // namespace castml
