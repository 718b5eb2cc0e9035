// The task registry: every ported dm_control domain adds its tasks here.
#include "envs/registry.h"

#include <algorithm>
#include <stdexcept>

#include "envs/tasks/acrobot.h"
#include "envs/tasks/ball_in_cup.h"
#include "envs/tasks/cartpole.h"
#include "envs/tasks/cheetah.h"
#include "envs/tasks/dog.h"
#include "envs/tasks/fish.h"
#include "envs/tasks/finger.h"
#include "envs/tasks/hopper.h"
#include "envs/tasks/humanoid.h"
#include "envs/tasks/pendulum.h"
#include "envs/tasks/point_mass.h"
#include "envs/tasks/quadruped.h"
#include "envs/tasks/reacher.h"
#include "envs/tasks/swimmer.h"
#include "envs/tasks/walker.h"

namespace mtrl {

const std::vector<TaskDef>& AllTasks() {
  static const std::vector<TaskDef> defs = [] {
    std::vector<TaskDef> d;
    tasks::AddAcrobotTasks(d);
    tasks::AddBallInCupTasks(d);
    tasks::AddCartpoleTasks(d);
    tasks::AddCheetahTasks(d);
    tasks::AddDogTasks(d);
    tasks::AddFishTasks(d);
    tasks::AddFingerTasks(d);
    tasks::AddHopperTasks(d);
    tasks::AddHumanoidTasks(d);
    tasks::AddPendulumTasks(d);
    tasks::AddPointMassTasks(d);
    tasks::AddQuadrupedTasks(d);
    tasks::AddReacherTasks(d);
    tasks::AddSwimmerTasks(d);
    tasks::AddWalkerTasks(d);
    std::sort(d.begin(), d.end(), [](const TaskDef& a, const TaskDef& b) { return a.name < b.name; });
    return d;
  }();
  return defs;
}

const TaskDef& FindTask(const std::string& name) {
  for (const TaskDef& def : AllTasks()) {
    if (def.name == name) return def;
  }
  std::string known;
  for (const TaskDef& def : AllTasks()) known += (known.empty() ? "" : ", ") + def.name;
  throw std::invalid_argument("unknown engine task '" + name + "'; known: " + known);
}

}  // namespace mtrl
