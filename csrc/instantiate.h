// The element types every kernel template is compiled for: float, c10::Half, c10::BFloat16
// (arithmetic is float32 inside). Only c10/util headers, so the .cu files may include it.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

// X(float) X(c10::Half) X(c10::BFloat16): one explicit instantiation per element type, at the end
// of each kernel file (the registrations dispatch over the same types with DA_DISPATCH_FLOATS).
#define DA_FOR_EACH_FLOAT(X) X(float) X(c10::Half) X(c10::BFloat16)
