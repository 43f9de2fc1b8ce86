"""The stage-1 stream cursor without Ray: where a resumed stream starts, which rows it drops, the state's file."""

from collections import Counter

import numpy as np
import torch

from system.runtime.stream_cursor import StreamCursor, StreamState, advance


def test_start_moves_past_positions_trained_to_their_end_only():
    counts = {
        3: Counter({0: 1, 1: 1, 2: 1}),  # 3 of 3 rows: done
        4: Counter({0: 2, 1: 1}),  # a row trained twice (a resampling repeat): 3 of 3 rows out
        5: Counter({0: 1}),  # 1 of 4: the stream resumes here
        6: Counter({2: 1}),  # trained on past the resume point: kept, to be dropped on resume
    }
    totals = {3: 3, 4: 3, 5: 4, 6: 5}
    state = advance(3, counts, totals)
    assert state.start == 5
    assert state.consumed == {5: {0: 1}, 6: {2: 1}} and state.consumed_rows == 2


def test_an_unfinished_read_or_an_empty_shard():
    # Position 0's final count is unknown (its read or decode counts are not all in): nothing moves.
    assert advance(0, {0: Counter({0: 1})}, {0: None}).start == 0
    # An empty or missing shard (0 rows) is done without a row trained; the cursor stops at the first gap.
    assert advance(0, {2: Counter({0: 1})}, {0: 0, 1: 0, 2: 1}).start == 3
    assert advance(0, {2: Counter({0: 1})}, {0: 0, 1: 5, 2: 1}).start == 1
    # Nothing trained yet: the state is where it was.
    assert advance(7, {}, {}) == StreamState(7, {})


def test_state_round_trips_through_its_file():
    state = StreamState(12, {12: {0: 1, 5: 2}, 14: {3: 1}})
    assert StreamState.from_json(state.to_json()) == state


def test_a_resumed_cursor_counts_the_carried_rows_once_over_all_ranks():
    resumed = StreamState(5, {5: {0: 1}})
    ranks = [StreamCursor(ledger=object(), resumed=resumed, rank=r) for r in range(2)]
    assert [dict(c.counts) for c in ranks] == [{5: Counter({0: 1})}, {}]
    ranks[1].note(torch.tensor([5, 5]), torch.tensor([1, 2]))
    ranks[1]._flush()
    assert ranks[1].counts[5] == Counter({1: 1, 2: 1})
    off = StreamCursor(ledger=None, resumed=None, rank=0)
    off.note(torch.tensor([1]), torch.tensor([1]))
    assert not off.enabled and off.checkpoint() is None and not off.pending


def test_decoded_rows_already_trained_on_are_dropped_first_copies_first():
    from system.runtime.reader import drop_rows

    out = {
        "shard": np.array([5, 5, 5, 5, 6]),
        "row": np.array([0, 0, 1, 2, 0]),  # row 0 of shard 5 comes twice (a resampling repeat)
        "label": np.array([10, 11, 12, 13, 14]),
    }
    kept = drop_rows(out, {5: {0: 1, 2: 1}})
    assert kept["label"].tolist() == [11, 12, 14]
    assert drop_rows(out, {9: {0: 1}}) is out  # nothing of the batch in the skip list: untouched
