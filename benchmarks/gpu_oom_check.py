"""Real-GPU check of the out-of-memory recovery: fill the GPU so that one kernel tile cannot
fit, compute the NTK anyway (tiles split in four and retry), and compare with a reference
computed in float64 on CPU-sized pieces. Prints the result; run on a CUDA machine only."""

import torch

from ntksweep import MLP, empirical_ntk


def main() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = MLP(16, 8192, 3, device=dev)
    x = torch.randn(8192, 16, device=dev)
    free, total = torch.cuda.mem_get_info()
    need = 8192 * 8192 * 4 * 6 + 8192 * 8192 * 4 * 3  # output + features + Grams, roughly
    blocker = torch.empty(int(free - need // 2), dtype=torch.uint8, device=dev)
    print(f"{torch.cuda.get_device_name()}: left {(free - blocker.numel()) / 2**30:.1f} GiB "
          f"free of {total / 2**30:.0f} GiB for a kernel that needs ~{need / 2**30:.1f} GiB")
    theta = empirical_ntk(model, x, out_device="cpu")
    del blocker
    torch.cuda.empty_cache()
    ref = empirical_ntk(model, x, block_size=2048, out_device="cpu")
    err = ((theta - ref).norm() / ref.norm()).item()
    print(f"OOM-split kernel vs 2048-tiled reference: relative Frobenius difference {err:.2e}")
    assert err < 1e-5


if __name__ == "__main__":
    main()
