# Sourced by the benchmark scripts: `machine_line` prints the CPU model, its cores and the
# vector/matrix flags the kernels choose by (docs/benchmarks.md records them beside each figure).
machine_line() {
    local cpu flags
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
    flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' \
        | grep -E '^(avx2|fma|avx512f|avx512_bf16|avx512_vnni|avx512_fp16|avx_vnni|amx_bf16|amx_int8|amx_tile)$' \
        | tr '\n' ' ')
    echo "machine: $cpu, $(nproc) cores; flags: $flags"
}

# `busy WALL USER SYS` prints "CPU busy" as the tables show it: (user + sys) / wall,
# and that over the cores in percent.
busy() {
    awk -v w="$1" -v u="$2" -v s="$3" -v c="$(nproc)" \
        'BEGIN { b = (u + s) / w; printf "%.2f (%.0f%%)", b, 100 * b / c }'
}
