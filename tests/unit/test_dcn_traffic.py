"""The DCN bytes of a compiled program's text: Megascale sends, weighted by collective and by loop trips."""

import pytest

from grit_jax import dcn_traffic

MEGASCALE = (
    'is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",'
)


def _send(name: str, shape: str, kind: str) -> str:
    attributes = f'{MEGASCALE}_xla_megascale_transfer_type="{kind}"}}'
    return f"  %{name} = ({shape}, u32[], token[]) send(%x, %t), {attributes}"


HLO = "\n".join(
    [
        "HloModule m",
        "",
        "%body (p: f32[4]) -> f32[4] {",
        _send("send", "f32[256]{0}", "ALL_REDUCE"),
        "}",
        "",
        "%loop (p: f32[4]) -> f32[4] {",
        _send("send.2", "f32[16]{0}", "ALL_TO_ALL"),
        "}",
        "",
        "%layers (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
        _send("send.3", "f32[4,128]{1,0:T(4,128)}", "REDUCE_SCATTER"),
        "}",
        "",
        "%count (p: (s32[], f32[4])) -> pred[] {",  # how the TPU compiler leaves a scan over 32 layers
        "  %constant.7 = s32[]{:T(128)} constant(32)",
        "  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0",
        "  ROOT %lt = pred[]{:T(512)} compare(%gte, %constant.7), direction=LT, metadata={}",
        "}",
        "",
        "ENTRY %main (a: f32[4]) -> f32[4] {",
        '  %w = f32[4] while(%a), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}',
        "  %v = f32[4] while(%a), condition=%cond, body=%loop",
        "  %u = (s32[], f32[4]) while(%b), condition=%count, body=%layers",
        _send("send.1", "bf16[8,128]{1,0:T(8,128)(2,1)}", "ALL_GATHER"),
        "  %s = f32[4] send(%x, %t), is_host_transfer=true",  # a host transfer that is not Megascale's
        "}",
    ]
)


def test_each_collective_counts_what_one_chip_sends_per_trip():
    traffic = dcn_traffic.dcn_traffic(HLO, slices=4)
    assert traffic.by_kind == {
        "ALL_REDUCE": 3 * 1024 * 2 * 3 / 4,  # 3 trips x 1 KiB x 2 (k-1)/k
        "ALL_GATHER": 2048 * 3,  # this chip's piece to each of the k-1 other slices
        "ALL_TO_ALL": 64 * 3 / 4,  # a loop without a known trip count: counted once, and said so
        "REDUCE_SCATTER": 32 * 2048 * 3 / 4,  # i < 32: 32 trips
    }
    assert traffic.transfers == 4 and traffic.in_unknown_loops == 1
    assert traffic.bytes_per_chip == sum(traffic.by_kind.values())
    assert traffic.seconds(25) == pytest.approx(traffic.bytes_per_chip * 8 / 25e9)


def test_one_slice_sends_nothing_and_the_report_line_says_so():
    assert dcn_traffic.report_fields(None, 1, "v5e") == {}
    fields = dict(slices=2, bytes_per_chip=0.0, by_kind={}, transfers=0, in_unknown_loops=0)
    line = dcn_traffic.report_line(dict(fields, gbps_per_chip=0.0, seconds=0.0))
    assert line.startswith("DCN        0.00 MiB sent per chip per step across 2 slices")
    assert "no cross-slice collective" in line and "--dcn_gbps" in line


def test_a_loop_whose_counter_steps_by_two_runs_half_its_bound():
    """XLA's windowed einsums count 0, 2, 4, ... < 8: four trips (grit_jax.hlo_text.trip_count, which the
    compiled-cost estimate reads too)."""
    text = "\n".join(
        [
            "HloModule m",
            "",
            "%pairs (p: (u32[], f32[4])) -> (u32[], f32[4]) {",
            "  %i = u32[] get-tuple-element(%p), index=0",
            "  %two = u32[] constant(2)",
            "  %next = u32[] add(%i, %two)",
            _send("send", "f32[256]{0}", "ALL_REDUCE"),
            "  ROOT %out = (u32[], f32[4]) tuple(%next, %x)",
            "}",
            "",
            "%below (p: (u32[], f32[4])) -> pred[] {",
            "  %bound = u32[] constant(8)",
            "  %j = u32[] get-tuple-element(%p), index=0",
            "  ROOT %lt = pred[] compare(%j, %bound), direction=LT",
            "}",
            "",
            "ENTRY %main (a: f32[4]) -> f32[4] {",
            "  %zero = u32[] constant(0)",
            "  %init = (u32[], f32[4]) tuple(%zero, %a)",
            "  %w = (u32[], f32[4]) while(%init), condition=%below, body=%pairs",
            "}",
        ]
    )
    assert dcn_traffic.dcn_traffic(text, slices=2).by_kind == {"ALL_REDUCE": 4 * 1024 * 2 * 1 / 2}
