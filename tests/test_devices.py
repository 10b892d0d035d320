"""One CUDA check and one vLLM URL for every part of p2o."""

from __future__ import annotations

from types import SimpleNamespace

from p2o.devices import cuda_available
from p2o.policy import vllm_server_url


def test_cuda_check_answers_without_raising():
    import torch

    assert cuda_available() == torch.cuda.is_available()


def test_the_vllm_url_is_the_base_url_or_host_and_port():
    args = SimpleNamespace(vllm_server_base_url=None, vllm_server_host="10.0.0.2", vllm_server_port=8001)
    assert vllm_server_url(args) == "http://10.0.0.2:8001"
    args.vllm_server_base_url = "https://vllm.example/"
    assert vllm_server_url(args) == "https://vllm.example"
