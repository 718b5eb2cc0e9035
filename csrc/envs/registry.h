// Registry of the C++ DeepMind Control tasks by name.
#pragma once

#include <string>
#include <vector>

#include "envs/task.h"

namespace mtrl {

// All registered tasks, sorted by name.
const std::vector<TaskDef>& AllTasks();

// The task named `name` ("cheetah-run"); throws std::invalid_argument listing the known names.
const TaskDef& FindTask(const std::string& name);

}  // namespace mtrl
