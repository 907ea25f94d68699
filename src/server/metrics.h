// /metrics in the Prometheus text exposition format (version 0.0.4): every metric has # HELP and # TYPE lines,
// names are prefixed "fp4serve_", counters end in "_total". Built from one ServiceStats snapshot, so the figures
// of one scrape are consistent with each other.
#pragma once
#include <string>

#include "server/engine_service.h"

namespace fp4serve {

std::string prometheus_metrics(const ServiceStats& stats, const std::string& weight_version);

}  // namespace fp4serve
