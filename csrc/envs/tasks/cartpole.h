// Cart-pole, ported from dm_control/suite/cartpole.py (tasks: balance, balance_sparse, swingup,
// swingup_sparse, two_poles, three_poles; the multi-pole models are built like _make_model).
#pragma once

#include "envs/rewards.h"
#include "envs/task.h"
#include "envs/tasks/common.h"
#include "envs/tasks/spec_edit.h"

namespace mtrl::tasks {

class Cartpole : public Task {
 public:
  static constexpr double kCartRange = 0.25;            // _CART_RANGE = (-0.25, 0.25)
  static constexpr double kAngleCosineLower = 0.995;    // _ANGLE_COSINE_RANGE = (0.995, 1)

  Cartpole(const Physics& p, bool swing_up, bool sparse)
      : swing_up_(swing_up), sparse_(sparse), slider_(p.JointQposAdr("slider")),
        hinge_1_(p.JointQposAdr("hinge_1")) {}

  void InitializeEpisode(Physics& p, Rng& rng) override {
    const int nv = p.m->nv;
    if (swing_up_) {
      p.d->qpos[slider_] = 0.01 * rng.Normal();
      p.d->qpos[hinge_1_] = M_PI + 0.01 * rng.Normal();
      for (int i = 2; i < nv; ++i) p.d->qpos[i] = 0.1 * rng.Normal();
    } else {
      p.d->qpos[slider_] = rng.Uniform(-0.1, 0.1);
      for (int i = 1; i < nv; ++i) p.d->qpos[i] = rng.Uniform(-0.034, 0.034);
    }
    for (int i = 0; i < nv; ++i) p.d->qvel[i] = 0.01 * rng.Normal();
  }
  void Observe(const Physics& p, ObsWriter& out) const override {
    out.Put(p.d->qpos[slider_]);  // position: cart position, then xmat[2:, ['zz', 'xz']]
    for (int b = 2; b < p.m->nbody; ++b) {
      out.Put(XMat(p, b, 2, 2));
      out.Put(XMat(p, b, 0, 2));
    }
    out.Put(p.d->qvel, p.m->nv);  // velocity
  }
  double Reward(const Physics& p) const override {
    const double cart = p.d->qpos[slider_];
    if (sparse_) {
      double r = Tolerance(cart, -kCartRange, kCartRange);
      for (int b = 2; b < p.m->nbody; ++b) r *= Tolerance(XMat(p, b, 2, 2), kAngleCosineLower, 1);
      return r;
    }
    double upright = 0;
    for (int b = 2; b < p.m->nbody; ++b) upright += (XMat(p, b, 2, 2) + 1) / 2;
    upright /= (p.m->nbody - 2);
    const double centered = (1 + Tolerance(cart, 0, 0, 2)) / 2;
    const double small_control = (4 + Tolerance(p.d->ctrl[0], 0, 0, 1, Sigmoid::kQuadratic, 0.0)) / 5;
    double small_velocity = 1;
    for (int i = 1; i < p.m->nv; ++i) small_velocity = std::min(small_velocity, Tolerance(p.d->qvel[i], 0, 0, 5));
    small_velocity = (1 + small_velocity) / 2;
    return upright * small_control * small_velocity * centered;
  }

 private:
  bool swing_up_, sparse_;
  int slider_, hinge_1_;
};

// cartpole._make_model(n_poles): poles 2..n chained below pole_1, floor lowered.
inline void EditCartpoleModel(mjSpec* spec, int n_poles) {
  mjsBody* parent = mjs_findBody(spec, "pole_1");
  mjsDefault* pole = mjs_findDefault(spec, "pole");
  if (!parent || !pole) throw std::runtime_error("model edit: cartpole.xml lacks pole_1 or class pole");
  for (int i = 2; i <= n_poles; ++i) {
    const std::string k = std::to_string(i);
    mjsBody* child = mjs_addBody(parent, pole);
    mjs_setName(child->element, ("pole_" + k).c_str());
    mjs_setString(child->childclass, "pole");
    child->pos[0] = 0;
    child->pos[1] = 0;
    child->pos[2] = 1;
    mjs_setName(mjs_addJoint(child, pole)->element, ("hinge_" + k).c_str());
    mjs_setName(mjs_addGeom(child, pole)->element, ("pole_" + k).c_str());
    parent = child;
  }
  mjs_asGeom(FindOrThrow(spec, mjOBJ_GEOM, "floor"))->pos[2] = 1 - n_poles - 0.05;
}

inline void AddCartpoleTasks(std::vector<TaskDef>& defs) {
  struct V { const char* task; bool swing_up, sparse; };
  for (V v : {V{"balance", false, false}, V{"balance_sparse", false, true}, V{"swingup", true, false},
              V{"swingup_sparse", true, true}}) {
    defs.push_back({std::string("cartpole-") + v.task, "cartpole.xml", 0.0, 10.0, false,
                    [v](const Physics& p) -> std::unique_ptr<Task> {
                      return std::make_unique<Cartpole>(p, v.swing_up, v.sparse);
                    }});
  }
  for (auto [task, n] : {std::pair{"two_poles", 2}, {"three_poles", 3}}) {  // swing-up, dense
    TaskDef def{std::string("cartpole-") + task, "cartpole.xml", 0.0, 10.0, false,
                [](const Physics& p) -> std::unique_ptr<Task> { return std::make_unique<Cartpole>(p, true, false); }};
    def.variant = "poles" + std::to_string(n);
    def.edit = [n = n](mjSpec* spec) { EditCartpoleModel(spec, n); };
    defs.push_back(def);
  }
}

}  // namespace mtrl::tasks
