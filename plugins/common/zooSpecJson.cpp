// zoo_trt_plugins_spec_json(): the plugin_spec constants compiled into the library, for the "can't drift" test.
#include "zooPluginSpec.h"
#include "zooScanKernels.h"

#include <string>

namespace
{
std::string quote(char const* s)
{
    return std::string("\"") + s + "\"";
}

template <size_t NI, size_t NO, size_t NF>
std::string op(char const* opType, char const* const (&ins)[NI], char const* const (&outs)[NO],
    char const* const (&fields)[NF], int32_t nbFields)
{
    std::string s = quote(opType) + ":{\"inputs\":[";
    for (size_t i = 0; i < NI; ++i)
    {
        s += (i ? "," : "") + quote(ins[i]);
    }
    s += "],\"outputs\":[";
    for (size_t i = 0; i < NO; ++i)
    {
        s += (i ? "," : "") + quote(outs[i]);
    }
    s += "],\"fields\":[";
    for (int32_t i = 0; i < nbFields; ++i)
    {
        s += (i ? "," : "") + quote(fields[i]);
    }
    return s + "]}";
}
} // namespace

extern "C" char const* zoo_trt_plugins_spec_json()
{
    using namespace zoo_spec;
    static std::string const json = std::string("{\"namespace\":") + quote(kPluginNamespace)
        + ",\"version\":" + quote(kPluginVersion) + ",\"library\":" + quote(kPluginLibrary) + ",\"ops\":{"
        + op(SelectiveScan::kOpType, SelectiveScan::kInputNames, SelectiveScan::kOutputNames,
            SelectiveScan::kFieldNames, SelectiveScan::kNbFields)
        + "," + op(SSDScan::kOpType, SSDScan::kInputNames, SSDScan::kOutputNames, SSDScan::kFieldNames, SSDScan::kNbFields)
        + "," + op(LRUScan::kOpType, LRUScan::kInputNames, LRUScan::kOutputNames, LRUScan::kFieldNames, LRUScan::kNbFields)
        + "}}";
    return json.c_str();
}
