// A graph entry lowered for execution: steps with resolved kernels, value storage classes
// (caller input, mapped constant, arena, returned output), and the memory plan.
//
// Memory plan: at load, each arena value gets its live interval [defining step, last use];
// per distinct set of sizes (the symbols of a call bound), values are packed into one arena
// greedily by size (TFLite's planner; the NumPy backend's runtime/memory.py does the same), and
// the plan is cached. Each call takes an arena from a pool, so concurrent calls never share
// buffers and steady-state calls allocate nothing but their returned outputs.
//
// Each step also owns a StepCache (kernel.h) and knows which of its inputs are constants of the
// file: GEMM and conv kernels pack their constant weights into the GEMM's operand layout on the
// first call and reuse them (one packed copy per step, shared by concurrent calls).
//
// Residual blocks: a conv whose output only feeds `add(conv, r)`, whose result only feeds
// `relu` or `maximum(., 0)` (or nothing more), runs as one step at the add's place, the add and
// ReLU applied in the GEMM's tile store (ResNet's conv -> add shortcut -> ReLU).
//
// Control flow (`if`, `loop`; control.cpp): each region of such an op becomes a sub-program
// with its own steps, memory plan and arena pool, run by the op's step on the call's shared
// value table (regions read the values they capture from enclosing programs in place). The
// step's inputs are the op's, then those captured values, so their live intervals cover it.
// Sizes known only at run time (an `if` whose branches yield different shapes, a loop-carried
// value that grows) are "dynamic": their symbols are bound when the op has run (as the NumPy
// executor's fresh symbols), and the values that mention them are allocated when they are
// computed instead of being planned.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "kernel.h"
#include "model.h"

namespace castml {

struct Result {
  std::vector<Tensor> outputs;
  std::vector<void*> owned;  // malloc'ed buffers behind outputs
  ~Result();
};

class Program {
 public:
  Program(const ModelDef& model, const GraphDef& graph);
  ~Program();
  // Runs on flat inputs (dtype and shape checked here); thread-safe.
  std::unique_ptr<Result> run(const std::vector<Tensor>& inputs) const;
  const GraphDef& graph() const { return graph_; }

  // The memory plan a call with the input symbols `env` gets (top level; regions plan their own
  // values when they run): the arena's values (value id, offset, bytes, first and last step),
  // its bytes, the bytes of the returned values (allocated apart, alive from their step to the
  // end), and the liveness lower bound (the most bytes of both alive at once). Values sized by
  // data (dynamic) are `unknown`, not planned. Throws kInputError for an unbound symbol.
  struct MemoryReport {
    std::vector<std::tuple<uint32_t, size_t, size_t, int, int>> arena;
    size_t arena_bytes = 0, output_bytes = 0, lower_bound_bytes = 0;
    std::vector<uint32_t> unknown;
  };
  MemoryReport memory_report(const Env& env) const;

 private:
  enum Storage { kInputValue, kConstValue, kArenaValue, kOutputValue, kUnusedValue, kDynamicValue };
  struct Step {
    const OpDef* op;
    const KernelDef* kernel;
    std::string label;
    std::vector<uint32_t> inputs, outputs;  // value ids, region aliases resolved
    std::vector<uint8_t> constant;          // per input: a constant of the file
    std::unique_ptr<StepCache> cache;       // what its kernel derives from constant inputs
    bool skip = false;                      // nothing to do per call (a constant checked at load)
    uint32_t residual = kNoValue;           // a conv with add (and relu) fused: the other addend
    bool relu = false;
    // `if` / `loop` (control.cpp): one sub-program per region; symbols its outputs bind
    // (output, axis, symbol); the symbols bound when it runs (its regions start from them)
    std::vector<std::unique_ptr<Program>> regions{};
    std::vector<std::tuple<size_t, size_t, std::string>> fresh{};
    std::set<std::string> bound_before{};
    std::vector<uint8_t> dynamic{};  // per output: sized when the step runs (a dynamic symbol)
  };
  static constexpr uint32_t kNoValue = UINT32_MAX;
  struct Plan {
    std::vector<size_t> offsets;  // per arena value (index into arena_values_)
    size_t total = 0;
  };
  struct Arena {
    void* data = nullptr;
    size_t size = 0;
    ~Arena();
  };

  // A sub-program's per-run state: its plan and arena, and its dynamic values' buffers.
  struct Frame {
    const Program* program = nullptr;
    std::shared_ptr<const Plan> plan;
    std::unique_ptr<Arena> arena;
    std::vector<void*> dynamic;
    void release_dynamic();
    ~Frame();
  };
  // A region as a sub-program; `bound`: the symbols bound when it starts (control.cpp).
  Program(Program& parent, uint32_t region, const std::set<std::string>& bound, bool loop_body);

  std::shared_ptr<const Plan> plan_for(const std::vector<size_t>& sizes) const;
  std::unique_ptr<Arena> take_arena(size_t size) const;
  void give_arena(std::unique_ptr<Arena> a) const;
  Env bind(const std::vector<Tensor>& inputs) const;
  void check_symbols(std::set<std::string> bound);
  void lower(uint32_t region, int depth);
  void lower_control(const OpDef& op, const std::string& label);  // control.cpp
  void build_regions();                                            // control.cpp
  void mark_dynamic();  // Step::dynamic from dynamic_symbols_
  // The declared shape of value v with env, checked (a negative dim, over 1 TiB: an input error).
  void shape_value(Tensor& t, uint32_t v, const Env& env, const std::string& label) const;
  // Shapes every step output into `values` with env (dynamic ones: when their step runs); returns
  // the arena values' byte sizes, what plan_for lays out (a call's, and memory_report's).
  std::vector<size_t> shape_steps(const Env& env, std::vector<Tensor>& values) const;
  // Runs the steps on the call's value table; dynamic values are malloc'ed into `dynamic`.
  void exec(std::vector<Tensor>& values, Env& env, std::vector<void*>& dynamic) const;
  // A buffer for a dynamic value of t's shape (max_tensor_bytes checked), owned by `dynamic`.
  static void allocate_dynamic(Tensor& t, const std::string& label, std::vector<void*>& dynamic);
  void enter(std::vector<Tensor>& values, const Env& env, Frame& f) const;  // a sub-program's call
  void run_if(const Step& s, std::vector<Tensor>& values, Env& env, std::vector<void*>& dynamic) const;
  void run_loop(const Step& s, std::vector<Tensor>& values, Env& env, std::vector<void*>& dynamic) const;
  // Binds the step's fresh symbols from the region's results ys and copies them to its outputs.
  void finish_control(const Step& s, const std::vector<const Tensor*>& ys, std::vector<Tensor>& values, Env& env,
                      std::vector<void*>& dynamic, const char* what) const;
  void fuse_residuals();
  uint32_t resolve(uint32_t v) const;

  const ModelDef& model_;
  const GraphDef& graph_;
  Program* root_;  // the entry's program: holds the value tables shared by all (alias_, const_data_)
  uint32_t region_ = 0;
  bool loop_body_ = false;
  std::set<std::string> rebound_;          // a loop body's parameter symbols bound per iteration
  std::set<std::string> dynamic_symbols_;  // symbols bound after this program starts
  struct Def {
    uint32_t value, step;
    int slot;  // index into arena_values_; -1: a constant, -2: dynamic
  };
  std::vector<Def> defs_;                  // a sub-program's step outputs
  std::vector<Step> steps_;
  std::vector<Storage> storage_;          // per value; root only
  std::vector<uint32_t> alias_;            // value id -> the value it stands for (inlined regions); root only
  std::vector<uint32_t> outputs_;          // the body's outputs, resolved
  std::vector<const void*> const_data_;   // per value, for kConstValue (every program's); root only
  std::vector<uint32_t> arena_values_;     // value ids living in the arena
  std::vector<int> arena_index_;           // value id -> index in arena_values_, or -1; root only
  std::vector<std::pair<int, int>> live_;  // per arena value: [first step, last step]
  std::vector<std::pair<uint32_t, int>> returned_;  // kOutputValue values and their defining steps

  mutable std::mutex mutex_;
  mutable std::vector<std::pair<std::vector<size_t>, std::shared_ptr<const Plan>>> plans_;
  mutable std::vector<std::unique_ptr<Arena>> arenas_;
};

}  // namespace castml
