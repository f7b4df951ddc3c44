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
#pragma once

#include <memory>
#include <mutex>
#include <string>
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
  // Runs on flat inputs (dtype and shape checked here); thread-safe.
  std::unique_ptr<Result> run(const std::vector<Tensor>& inputs) const;
  const GraphDef& graph() const { return graph_; }

 private:
  enum Storage { kInputValue, kConstValue, kArenaValue, kOutputValue, kUnusedValue };
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

  std::shared_ptr<const Plan> plan_for(const std::vector<size_t>& sizes) const;
  std::unique_ptr<Arena> take_arena(size_t size) const;
  void give_arena(std::unique_ptr<Arena> a) const;
  Env bind(const std::vector<Tensor>& inputs) const;
  void check_symbols() const;
  void lower(uint32_t region, int depth);
  void fuse_residuals();
  uint32_t resolve(uint32_t v) const;

  const ModelDef& model_;
  const GraphDef& graph_;
  std::vector<Step> steps_;
  std::vector<Storage> storage_;
  std::vector<uint32_t> alias_;            // value id -> the value it stands for (inlined regions)
  std::vector<uint32_t> outputs_;          // the body's outputs, resolved
  std::vector<const void*> const_data_;   // per value, for kConstValue
  std::vector<uint32_t> arena_values_;     // value ids living in the arena
  std::vector<int> arena_index_;           // value id -> index in arena_values_, or -1
  std::vector<std::pair<int, int>> live_;  // per arena value: [first step, last step]

  mutable std::mutex mutex_;
  mutable std::vector<std::pair<std::vector<size_t>, std::shared_ptr<const Plan>>> plans_;
  mutable std::vector<std::unique_ptr<Arena>> arenas_;
};

}  // namespace castml
