"""Synthetic e-commerce event logs with a behaviour-driven churn process.

``generate`` writes a hive-partitioned Parquet dataset::

    out_dir/bucket=00000/part-00000.parquet
    out_dir/bucket=00001/part-00000.parquet
    ...
    out_dir/_synthetic.json        parameters and counts (readers skip names starting with "_")

``bucket = shard_of(customer_id, n_partitions)`` (see ``seqchurn.data.sharding``), so all
events of a customer are in one bucket and a scorer can stream the dataset one bucket at a
time. Inside a file, rows are sorted by ``(customer_id, event_time)`` and a file never
splits a customer. The raw columns look like a shop's export:

============  ======================  ==================================================
column        type                    meaning
============  ======================  ==================================================
customer_id   string                  "C" and the zero-padded customer number, "C0000123"
event_time    timestamp[us, tz=UTC]   when the event happened
event_type    string                  view, cart, purchase or return
amount        float64                 item price for purchase and return (> 0), else 0
item_id       string                  "I" and the zero-padded item number, "I00042"
order_id      string or null          set for purchase and return rows, null otherwise
============  ======================  ==================================================

The generative model, per customer:

* The customer joins at a uniform time in the first 90 % of the window; the join session
  is their first event. Sessions then follow an inhomogeneous Poisson process whose
  intensity is ``session_rate * activity * exp(trend * years since join) * weekly(day) *
  yearly(day) * fade(t)``. ``activity`` is lognormal (mean 1), so event counts are heavy
  tailed. ``trend`` (per year) may be negative, so activity can decline. Session start
  times follow a diurnal profile (UTC).
* Each session has a geometric number of item views. A view becomes a cart event with the
  customer's cart probability, and a session with carts becomes an order with the
  customer's conversion probability: one purchase row per carted item, sharing an
  ``order_id``. Each purchase line is returned with the customer's return probability,
  1 to a few weeks later, with the same ``order_id``, ``item_id`` and ``amount``.
* The customer churns at a drawn time: an exponential lifetime whose hazard is higher for
  low activity, a declining trend, many returns and low cart and conversion rates. No event
  of the customer happens at or after that time. In the 90 days before it, the session
  intensity fades linearly to 20 %, so the decline shows in the log.

``session_rate`` is calibrated on a fixed sample of simulated customers so that the mean
number of events per customer is ``events_per_customer``. The realised mean differs by a
few percent (sampling noise of a heavy-tailed distribution).

Random numbers are counter based: each one is a hash of ``(seed, customer number, session,
view, stream)``. A customer's events therefore depend only on the seed, the customer
number and the window, not on which other customers are generated in the same chunk. The
files are byte-identical for any ``chunk_customers``, and the first customers of a large
dataset equal those of a small one with the same seed and window.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import special, stats

from seqchurn.data.sharding import shard_of

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = ("view", "cart", "purchase", "return")
"""Raw event types, in the order of their integer codes inside this module."""
VIEW, CART, PURCHASE, RETURN = range(4)

SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("order_id", pa.string(), nullable=True),
    ]
)
"""Arrow schema of every file ``generate`` writes."""

SUMMARY_FILE = "_synthetic.json"
DEFAULT_ROWS_PER_FILE = 1_000_000
DEFAULT_EVENTS_PER_PARTITION = 1_000_000
DEFAULT_CHUNK_CUSTOMERS = 50_000

DAY = 86_400.0
YEAR_DAYS = 365.25

# Model parameters. They are module constants rather than arguments, so that the seed,
# size and window alone identify a dataset.
N_ITEMS = 20_000
ITEM_POPULARITY_EXPONENT = 2.0  # item = floor(N_ITEMS * u**2): the top 1 % of items get 10 % of views
JOIN_SPAN = 0.9  # customers join in the first 90 % of the window
ACTIVITY_SIGMA = 1.0  # lognormal sigma of the per-customer activity multiplier
TREND_MEAN, TREND_SD, TREND_RANGE = -0.25, 0.6, (-2.5, 1.0)  # log-rate change per year
BASE_HAZARD_PER_DAY = 1.0 / 600.0
FADE_DAYS, FADE_FLOOR = 90.0, 0.2
VIEW_GAP_MEAN_S = 75.0
CART_DELAY_MEAN_S, CART_DELAY_MAX_S = 45.0, 600.0
CHECKOUT_DELAY_S, CHECKOUT_EXTRA_MEAN_S = 600.0, 180.0
RETURN_MIN_DAYS, RETURN_EXTRA_MEAN_DAYS = 1.0, 10.0
CALIBRATION_CUSTOMERS = 32_768

# Session intensity by day of week, Monday first, mean 1. The weekend is busiest.
WEEKLY = np.array([0.97, 0.92, 0.92, 0.95, 1.02, 1.10, 1.12])
WEEKLY = WEEKLY / WEEKLY.mean()
# Relative session intensity by UTC hour. Night is quiet and the evening busiest.
HOURLY = np.array([3, 2, 1.5, 1, 1, 1.2, 2, 3.5, 5, 6, 6.5, 7, 7.5, 7, 6.5, 6.5, 7, 8, 9, 10, 10, 9, 7, 5], dtype=float)
HOURLY_CDF = np.cumsum(HOURLY) / HOURLY.sum()


def _yearly_profile() -> np.ndarray:
    """Session intensity by day of year (0-based, 366 entries), mean 1 over days 0-364.

    A mild winter high and summer low, plus Black Friday week (about day 328) and the
    Christmas run-up (about day 345).
    """
    doy = np.arange(366, dtype=float)
    profile = (
        1.0
        + 0.12 * np.cos(2 * np.pi * (doy - 20.0) / 365.0)
        + 0.8 * np.exp(-0.5 * ((doy - 328.0) / 4.0) ** 2)
        + 0.5 * np.exp(-0.5 * ((doy - 345.0) / 8.0) ** 2)
    )
    return profile / profile[:365].mean()


YEARLY = _yearly_profile()
SEASON_MAX = float(WEEKLY.max() * YEARLY.max())


# --- counter-based random numbers -------------------------------------------------------

_MULT1 = np.uint64(0xBF58476D1CE4E5B9)
_MULT2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """Return the splitmix64 finaliser of a ``uint64`` array (a bijection with good avalanche)."""
    x = x ^ (x >> np.uint64(30))
    x *= _MULT1
    x ^= x >> np.uint64(27)
    x *= _MULT2
    x ^= x >> np.uint64(31)
    return x


def _derive(parent: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Return child keys, one per ``(parent, key)`` pair, e.g. a session's key from its customer's."""
    return _mix(parent ^ ((np.asarray(key).astype(np.uint64) + np.uint64(1)) * _GOLDEN))


def _wrap64(value: int) -> np.uint64:
    """Return ``value`` modulo 2**64 as a numpy scalar (numpy warns on scalar overflow)."""
    return np.uint64(value % 2**64)


def _root_key(seed: int, salt: int) -> np.ndarray:
    return _mix(_mix(np.array([seed], dtype=np.uint64) ^ _wrap64(salt * int(_GOLDEN))))


class _Stream:
    """Stream numbers: each draw of an entity uses its own, so draws are independent."""

    JOIN_DAY, JOIN_HOUR, JOIN_SECOND = 1, 2, 3
    ACTIVITY, TREND, RETURNS, CONVERSION, CART, VIEWS, LIFETIME = 4, 5, 6, 7, 8, 9, 10
    N_SESSIONS = 11
    SESSION_TIME, SESSION_ACCEPT, SESSION_HOUR, SESSION_SECOND, SESSION_VIEWS, SESSION_BUY = 12, 13, 14, 15, 16, 17
    VIEW_GAP, VIEW_ITEM, VIEW_CART, CART_DELAY = 18, 19, 20, 21
    CHECKOUT_DELAY, RETURNED, RETURN_DELAY = 22, 23, 24
    ITEM_PRICE = 25


def _uniform(keys: np.ndarray, stream: int) -> np.ndarray:
    """Return one uniform number in the open interval (0, 1) per key for ``stream``."""
    bits = _mix(keys ^ _wrap64(stream * int(_MULT2)))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2**53)


def _normal(keys: np.ndarray, stream: int) -> np.ndarray:
    return special.ndtri(_uniform(keys, stream))


def _exponential(keys: np.ndarray, stream: int, mean: float) -> np.ndarray:
    return -mean * np.log(_uniform(keys, stream))


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``counts[p]`` children of each parent ``p``, return each child's parent and its index among its siblings."""
    counts = counts.astype(np.int64)
    parent = np.repeat(np.arange(len(counts)), counts)
    first_child = np.cumsum(counts) - counts
    local = np.arange(len(parent), dtype=np.int64) - first_child[parent]
    return parent, local


# --- calendar ---------------------------------------------------------------------------


def _season(abs_seconds: np.ndarray) -> np.ndarray:
    """Return ``weekly * yearly`` at Unix times in seconds (UTC)."""
    day = np.floor(abs_seconds / DAY).astype(np.int64)
    day_of_week = (day + 3) % 7  # 1970-01-01 was a Thursday, and Monday is 0
    dates = day.astype("datetime64[D]")
    day_of_year = (dates - dates.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    return WEEKLY[day_of_week] * YEARLY[day_of_year]


def _time_of_day(keys: np.ndarray, hour_stream: int, second_stream: int) -> np.ndarray:
    """Draw seconds since midnight from the diurnal profile ``HOURLY``."""
    hour = np.searchsorted(HOURLY_CDF, _uniform(keys, hour_stream), side="right")
    return np.minimum(hour, 23) * 3600.0 + _uniform(keys, second_stream) * 3600.0


# --- customers --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    start_s: float  # Unix time of the first instant, seconds
    days: int


@dataclass
class _Customers:
    """Latent attributes of a set of customers. Times are seconds since the window start."""

    keys: np.ndarray
    join: np.ndarray
    stop: np.ndarray  # min(churn, window end); the customer has no event at or after it
    churn: np.ndarray
    activity: np.ndarray
    trend: np.ndarray  # log-rate change per year since join
    p_cart: np.ndarray
    p_buy: np.ndarray
    p_return: np.ndarray
    mean_views: np.ndarray

    def expected_events_per_session(self) -> np.ndarray:
        return self.mean_views * (1 + self.p_cart * (1 + self.p_buy * (1 + self.p_return)))


def _draw_customers(keys: np.ndarray, window: _Window) -> _Customers:
    join_day = np.floor(_uniform(keys, _Stream.JOIN_DAY) * JOIN_SPAN * window.days)
    day_start = window.start_s + join_day * DAY
    # The window may start at any time of day, so a join drawn before the start moves to the start.
    midnight = np.floor(day_start / DAY) * DAY
    join_abs = np.maximum(midnight + _time_of_day(keys, _Stream.JOIN_HOUR, _Stream.JOIN_SECOND), window.start_s)
    join = join_abs - window.start_s

    z_activity = _normal(keys, _Stream.ACTIVITY)
    z_trend = _normal(keys, _Stream.TREND)
    z_returns = _normal(keys, _Stream.RETURNS)
    z_conversion = _normal(keys, _Stream.CONVERSION)
    z_cart = _normal(keys, _Stream.CART)
    z_views = _normal(keys, _Stream.VIEWS)

    activity = np.exp(ACTIVITY_SIGMA * z_activity - ACTIVITY_SIGMA**2 / 2)
    trend = np.clip(TREND_MEAN + TREND_SD * z_trend, *TREND_RANGE)
    p_return = special.expit(-2.6 + 0.9 * z_returns)
    p_buy = special.expit(0.0 + 0.8 * z_conversion)
    p_cart = special.expit(-1.4 + 0.6 * z_cart)
    mean_views = 1.0 + 1.6 * np.exp(0.35 * z_views - 0.06)

    # Churn hazard: low activity, a declining trend, many returns and low cart and
    # conversion rates (low spend) all shorten the expected lifetime.
    log_hazard = -0.45 * z_activity - 0.8 * z_trend + 0.5 * z_returns - 0.35 * z_conversion - 0.2 * z_cart
    hazard = BASE_HAZARD_PER_DAY * np.exp(log_hazard)
    lifetime_days = -np.log(_uniform(keys, _Stream.LIFETIME)) / hazard
    churn = join + lifetime_days * DAY
    stop = np.minimum(churn, window.days * DAY)

    return _Customers(keys, join, stop, churn, activity, trend, p_cart, p_buy, p_return, mean_views)


def _trend_integral_days(trend: np.ndarray, span_years: np.ndarray) -> np.ndarray:
    """Return the integral of ``exp(trend * years)`` over ``[0, span_years]``, in days."""
    product = trend * span_years
    safe_trend = np.where(np.abs(product) < 1e-9, 1.0, trend)
    integral = np.where(np.abs(product) < 1e-9, span_years, np.expm1(product) / safe_trend)
    return integral * YEAR_DAYS


def _fade(t: np.ndarray, churn: np.ndarray) -> np.ndarray:
    """Return the pre-churn intensity factor: 1, falling linearly to FADE_FLOOR at the churn time."""
    days_left = (churn - t) / DAY
    return np.clip(FADE_FLOOR + (1 - FADE_FLOOR) * days_left / FADE_DAYS, FADE_FLOOR, 1.0)


@functools.lru_cache(maxsize=16)
def _calibrate_session_rate(seed: int, window: _Window, events_per_customer: float) -> float:
    """Return the sessions per day (at activity 1, trend 0, average season) that give the target mean.

    The expectation is taken over ``CALIBRATION_CUSTOMERS`` simulated customers (drawn from a
    separate stream, so they are not customers of the dataset), integrating the session
    intensity on a daily grid.
    """
    keys = _derive(_root_key(seed, salt=2), np.arange(CALIBRATION_CUSTOMERS))
    customers = _draw_customers(keys, window)
    per_session = customers.expected_events_per_session()

    grid = (np.arange(window.days) + 0.5) * DAY
    season = _season(window.start_s + grid)
    exposure = np.zeros(len(keys))
    rows_per_piece = max(1, 1_000_000 // window.days)  # bounds the (customer, day) grid to about 1 M cells
    for first in range(0, len(keys), rows_per_piece):
        rows = slice(first, first + rows_per_piece)
        t = grid[None, :]
        join, stop, churn = customers.join[rows, None], customers.stop[rows, None], customers.churn[rows, None]
        years = np.maximum(t - join, 0.0) / (YEAR_DAYS * DAY)
        intensity = np.exp(customers.trend[rows, None] * years) * season[None, :] * _fade(t, churn)
        exposure[rows] = np.where((t >= join) & (t < stop), intensity, 0.0).sum(axis=1)

    minimum = float(per_session.mean())
    if events_per_customer <= minimum * 1.05:
        raise ValueError(
            f"Expected `events_per_customer` above {minimum * 1.05:.1f} (every customer has a join "
            f"session of about {minimum:.1f} events), but got {events_per_customer}"
        )
    return (events_per_customer - minimum) / float((per_session * customers.activity * exposure).mean())


# --- events -----------------------------------------------------------------------------


@dataclass
class _Events:
    """Event rows of a chunk as parallel arrays. ``customer`` indexes the chunk's customers."""

    customer: np.ndarray
    time: np.ndarray  # seconds since the window start
    kind: np.ndarray
    amount: np.ndarray
    item: np.ndarray
    order: np.ndarray  # session number of the order within the customer, -1 if none


def _draw_sessions(customers: _Customers, window: _Window, session_rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (customer, session number, start time) of every session; session 0 is the join."""
    span_years = (customers.stop - customers.join) / (YEAR_DAYS * DAY)
    trend_days = _trend_integral_days(customers.trend, span_years)
    # Thinning: candidates at the maximal seasonal intensity, accepted with the actual one.
    expected_candidates = session_rate * customers.activity * SEASON_MAX * trend_days
    n_candidates = stats.poisson.ppf(_uniform(customers.keys, _Stream.N_SESSIONS), expected_candidates).astype(np.int64)

    owner, local = _expand(n_candidates)
    number = local + 1
    keys = _derive(customers.keys[owner], number)

    # Inverse CDF of the density exp(trend * years) on [0, span_years].
    u = _uniform(keys, _Stream.SESSION_TIME)
    trend, span = customers.trend[owner], span_years[owner]
    product = trend * span
    safe_trend = np.where(np.abs(product) < 1e-9, 1.0, trend)
    years = np.where(np.abs(product) < 1e-9, u * span, np.log1p(u * np.expm1(product)) / safe_trend)
    t = customers.join[owner] + years * YEAR_DAYS * DAY

    accept_probability = _season(window.start_s + t) * _fade(t, customers.churn[owner]) / SEASON_MAX
    accepted = _uniform(keys, _Stream.SESSION_ACCEPT) < accept_probability
    owner, number, keys, t = owner[accepted], number[accepted], keys[accepted], t[accepted]

    # Keep the day of the accepted time, and draw the time of day from the diurnal profile.
    abs_midnight = np.floor((window.start_s + t) / DAY) * DAY
    start = abs_midnight + _time_of_day(keys, _Stream.SESSION_HOUR, _Stream.SESSION_SECOND) - window.start_s
    inside = (start > customers.join[owner]) & (start < customers.stop[owner])

    n = len(customers.keys)
    owner = np.concatenate([np.arange(n), owner[inside]])
    number = np.concatenate([np.zeros(n, dtype=np.int64), number[inside]])
    start = np.concatenate([customers.join, start[inside]])
    return owner, number, start


def _item_prices(seed: int) -> np.ndarray:
    """Return the price of every catalogue item: lognormal, median about 20, rounded to cents."""
    keys = _derive(_root_key(seed, salt=3), np.arange(N_ITEMS))
    price = np.exp(3.0 + 0.9 * _normal(keys, _Stream.ITEM_PRICE))
    return np.maximum(np.round(price, 2), 0.99)


def _draw_events(customers: _Customers, window: _Window, session_rate: float, prices: np.ndarray) -> _Events:
    session_owner, session_number, session_start = _draw_sessions(customers, window, session_rate)
    session_keys = _derive(customers.keys[session_owner], session_number)

    # Views: a geometric count with the customer's mean, spaced by exponential gaps.
    mean_views = customers.mean_views[session_owner]
    stay = (mean_views - 1.0) / mean_views
    n_views = 1 + np.floor(np.log(_uniform(session_keys, _Stream.SESSION_VIEWS)) / np.log(stay)).astype(np.int64)
    view_session, view_number = _expand(n_views)
    view_keys = _derive(session_keys[view_session], view_number)
    gap = np.where(view_number == 0, 0.0, _exponential(view_keys, _Stream.VIEW_GAP, VIEW_GAP_MEAN_S))
    # A cumulative sum restarted per session: one running sum over the whole chunk would
    # round differently depending on the sessions before it, and so on the chunk size.
    since_start = pd.Series(gap).groupby(view_session).cumsum().to_numpy()
    view_time = session_start[view_session] + since_start
    view_item = np.floor(N_ITEMS * _uniform(view_keys, _Stream.VIEW_ITEM) ** ITEM_POPULARITY_EXPONENT).astype(np.int64)
    view_owner = session_owner[view_session]

    # Carts: some views put the item in the cart shortly afterwards.
    carted = _uniform(view_keys, _Stream.VIEW_CART) < customers.p_cart[view_owner]
    cart_view = np.flatnonzero(carted)
    cart_delay = np.minimum(_exponential(view_keys[cart_view], _Stream.CART_DELAY, CART_DELAY_MEAN_S), CART_DELAY_MAX_S)
    cart_time = view_time[cart_view] + cart_delay

    # Orders: a session with carts converts with the customer's probability. It gets one
    # purchase row per carted item, after the last view plus a checkout delay.
    has_cart = np.bincount(view_session[cart_view], minlength=len(session_owner)) > 0
    buys = has_cart & (_uniform(session_keys, _Stream.SESSION_BUY) < customers.p_buy[session_owner])
    last_view_time = view_time[np.cumsum(n_views) - 1]
    checkout_time = last_view_time + CHECKOUT_DELAY_S + _exponential(session_keys, _Stream.CHECKOUT_DELAY, CHECKOUT_EXTRA_MEAN_S)
    purchase_view = cart_view[buys[view_session[cart_view]]]
    # An item carted twice in a session is one order line, so (order_id, item_id) is unique.
    _, first_line = np.unique(view_session[purchase_view] * N_ITEMS + view_item[purchase_view], return_index=True)
    purchase_view = purchase_view[np.sort(first_line)]
    purchase_session = view_session[purchase_view]
    purchase_time = checkout_time[purchase_session]

    # Returns: each purchase line, independently, some days later.
    purchase_owner = session_owner[purchase_session]
    returned = _uniform(view_keys[purchase_view], _Stream.RETURNED) < customers.p_return[purchase_owner]
    return_view = purchase_view[returned]
    return_delay_days = RETURN_MIN_DAYS + _exponential(view_keys[return_view], _Stream.RETURN_DELAY, RETURN_EXTRA_MEAN_DAYS)
    return_time = purchase_time[returned] + return_delay_days * DAY

    sources = [
        (view_owner, view_time, VIEW, np.arange(len(view_owner)), None),
        (view_owner[cart_view], cart_time, CART, cart_view, None),
        (purchase_owner, purchase_time, PURCHASE, purchase_view, purchase_session),
        (purchase_owner[returned], return_time, RETURN, return_view, purchase_session[returned]),
    ]
    customer = np.concatenate([s[0] for s in sources])
    event_time = np.concatenate([s[1] for s in sources])
    kind = np.concatenate([np.full(len(s[0]), s[2], dtype=np.int8) for s in sources])
    item = np.concatenate([view_item[s[3]] for s in sources])
    order = np.concatenate([np.full(len(s[0]), -1) if s[4] is None else session_number[s[4]] for s in sources])
    amount = np.where(kind >= PURCHASE, prices[item], 0.0)

    # The customer's stop time (churn or window end) cuts off sessions and returns that
    # would run past it. A return is always later than its purchase, so every return
    # left in the log has its purchase.
    keep = event_time < customers.stop[customer]
    return _Events(customer[keep], event_time[keep], kind[keep], amount[keep], item[keep], order[keep])


# --- output -----------------------------------------------------------------------------


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _to_table(events: _Events, customer_ids: pa.Array, customer_numbers: np.ndarray, id_width: int, window: _Window) -> pa.Table:
    """Build the Arrow table of ``events``, which must be sorted by customer and time."""
    has_order = events.order >= 0
    order_rows = np.flatnonzero(has_order)
    order_numbers = _format_ids("-", events.order[order_rows], 5)
    order_ids = pc.binary_join_element_wise(
        "O", _format_ids("", customer_numbers[events.customer[order_rows]], id_width), order_numbers, ""
    )
    order_index = np.full(len(events.order), -1, dtype=np.int64)
    order_index[order_rows] = np.arange(len(order_rows))
    order_take = pa.array(order_index, mask=~has_order)

    start_us = int(round(window.start_s * 1e6))
    event_time_us = start_us + np.round(events.time * 1e6).astype(np.int64)
    columns = [
        customer_ids.take(pa.array(events.customer)),
        pa.array(event_time_us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(list(EVENT_TYPES), type=pa.string()).take(pa.array(events.kind)),
        pa.array(events.amount, type=pa.float64()),
        _format_ids("I", events.item, len(str(N_ITEMS - 1))),
        order_ids.take(order_take),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _file_boundaries(customer: np.ndarray, rows_per_file: int) -> list[tuple[int, int]]:
    """Split sorted rows into files of about ``rows_per_file`` rows, never splitting a customer."""
    n = len(customer)
    if n <= rows_per_file:
        return [(0, n)]
    starts = np.flatnonzero(np.r_[True, customer[1:] != customer[:-1]])
    bounds = [0]
    while n - bounds[-1] > rows_per_file:
        # The last customer start at or before the row limit; a customer longer than the
        # limit gets a file of their own.
        position = np.searchsorted(starts, bounds[-1] + rows_per_file, side="right") - 1
        cut = int(starts[position])
        if cut <= bounds[-1]:
            cut = int(starts[position + 1]) if position + 1 < len(starts) else n
        bounds.append(cut)
    bounds.append(n)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _group_buckets(bucket_sizes: np.ndarray, chunk_customers: int) -> list[np.ndarray]:
    """Group consecutive buckets so that a group has at most ``chunk_customers`` customers (or one bucket)."""
    groups, current, size = [], [], 0
    for bucket, count in enumerate(bucket_sizes):
        if current and size + count > chunk_customers:
            groups.append(np.array(current))
            current, size = [], 0
        current.append(bucket)
        size += int(count)
    if current:
        groups.append(np.array(current))
    return groups


# --- driver -----------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}, but got {value!r}")
    return int(value)


def _parse_start(start: str | pd.Timestamp) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError) as err:
        raise ValueError(f"Expected `start` to be a date or timestamp such as '2022-01-01', but got {start!r}") from err
    if ts is pd.NaT:
        raise ValueError(f"Expected `start` to be a date or timestamp such as '2022-01-01', but got {start!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"Output path {out_dir} exists and is not a directory; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"Output directory {out_dir} is not empty; choose an empty one or pass overwrite=True (--overwrite)")
        others = [p.name for p in out_dir.iterdir() if not (p.name.startswith("bucket=") or p.name == SUMMARY_FILE)]
        if others:
            raise ValueError(
                f"Output directory {out_dir} contains files that generate did not write ({sorted(others)[:5]}); "
                "overwrite only replaces a synthetic dataset, so remove them or choose another directory"
            )
        for path in out_dir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        log.info("Removed the previous dataset in %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def generate(
    out_dir: str | Path,
    n_customers: int,
    *,
    events_per_customer: float = 50.0,
    start: str | pd.Timestamp = "2022-01-01",
    days: int = 730,
    seed: int = 0,
    n_partitions: int | None = None,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    chunk_customers: int = DEFAULT_CHUNK_CUSTOMERS,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic event log of ``n_customers`` customers to ``out_dir`` and return a summary.

    Args:
        events_per_customer: target mean number of events per customer.
        start, days: the window ``[start, start + days)``; a naive ``start`` is UTC.
        n_partitions: number of buckets; by default one per about
            ``DEFAULT_EVENTS_PER_PARTITION`` events.
        rows_per_file: row limit of one file. Only a customer with more rows than that
            gets a larger file (of their own).
        chunk_customers: customers held in memory at once. Whole buckets are generated
            together, so a bucket larger than this is still generated in one piece. The
            output does not depend on it.
        overwrite: replace a dataset that ``generate`` wrote before into ``out_dir``.

    The same arguments write byte-identical files (with the same pyarrow version). See the
    module docstring for the layout and the model. Raises ``ValueError`` on invalid
    arguments or a non-empty ``out_dir``, before anything is written.
    """
    n_customers = _check_int("n_customers", n_customers, 1)
    days = _check_int("days", days, 1)
    seed = _check_int("seed", seed, 0)
    rows_per_file = _check_int("rows_per_file", rows_per_file, 1)
    chunk_customers = _check_int("chunk_customers", chunk_customers, 1)
    if seed >= 2**64:
        raise ValueError(f"Expected `seed` below 2**64, but got {seed}")
    if not isinstance(events_per_customer, (int, float, np.number)) or not math.isfinite(events_per_customer):
        raise ValueError(f"Expected `events_per_customer` to be a finite number, but got {events_per_customer!r}")
    if n_partitions is None:
        n_partitions = max(1, math.ceil(n_customers * events_per_customer / DEFAULT_EVENTS_PER_PARTITION))
    n_partitions = _check_int("n_partitions", n_partitions, 1)
    if n_partitions > 99_999:
        raise ValueError(f"Expected `n_partitions` at most 99999 (five-digit bucket names), but got {n_partitions}")
    start_ts = _parse_start(start)
    window = _Window(start_s=start_ts.value / 1e9, days=days)
    out_dir = Path(out_dir)

    began = time.perf_counter()
    session_rate = _calibrate_session_rate(seed, window, float(events_per_customer))
    _prepare_out_dir(out_dir, overwrite)
    prices = _item_prices(seed)
    id_width = max(7, len(str(n_customers - 1)))
    root = _root_key(seed, salt=1)
    log.info(
        "Generating %d customers (target %.1f events each) over %d days from %s into %s, %d buckets",
        n_customers, events_per_customer, days, start_ts.date(), out_dir, n_partitions,
    )

    # Bucket of every customer, hashed in pieces so that only one piece of id strings is in memory.
    bucket = np.empty(n_customers, dtype=np.int64)
    for first in range(0, n_customers, 1_000_000):
        numbers = np.arange(first, min(first + 1_000_000, n_customers))
        ids = _format_ids("C", numbers, id_width).to_numpy(zero_copy_only=False)
        bucket[numbers] = shard_of(ids, n_partitions)
    by_bucket = np.argsort(bucket, kind="stable")
    bucket_sizes = np.bincount(bucket, minlength=n_partitions)
    bucket_offsets = np.concatenate([[0], np.cumsum(bucket_sizes)])
    del bucket

    type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
    n_files, n_churned, max_events = 0, 0, 0
    groups = _group_buckets(bucket_sizes, chunk_customers)
    for group_number, group in enumerate(groups):
        numbers = by_bucket[bucket_offsets[group[0]] : bucket_offsets[group[-1] + 1]]
        customers = _draw_customers(_derive(root, numbers), window)
        events = _draw_events(customers, window, session_rate, prices)
        n_churned += int((customers.churn < window.days * DAY).sum())

        order = np.lexsort((events.kind, events.time, events.customer))
        events = _Events(*(getattr(events, f)[order] for f in ("customer", "time", "kind", "amount", "item", "order")))
        type_counts += np.bincount(events.kind, minlength=len(EVENT_TYPES))
        max_events = max(max_events, int(np.bincount(events.customer, minlength=len(numbers)).max()))
        table = _to_table(events, _format_ids("C", numbers, id_width), numbers, id_width, window)

        # Customers are ordered by bucket, so each bucket is a contiguous slice of rows.
        row_of_customer = np.searchsorted(events.customer, bucket_offsets[group] - bucket_offsets[group[0]])
        row_bounds = np.append(row_of_customer, len(events.customer))
        for position, bucket_number in enumerate(group):
            lo, hi = int(row_bounds[position]), int(row_bounds[position + 1])
            if hi == lo:
                log.warning("Bucket %d has no customers; no directory is written for it", bucket_number)
                continue
            directory = out_dir / f"bucket={bucket_number:05d}"
            directory.mkdir(exist_ok=True)
            for part, (a, b) in enumerate(_file_boundaries(events.customer[lo:hi], rows_per_file)):
                pq.write_table(table.slice(lo + a, b - a), directory / f"part-{part:05d}.parquet", compression="zstd")
                n_files += 1
        log.info(
            "Chunk %d/%d: buckets %d-%d, %d customers, %d events (%.0f s so far)",
            group_number + 1, len(groups), group[0], group[-1], len(numbers), len(events.customer),
            time.perf_counter() - began,
        )

    n_events = int(type_counts.sum())
    summary = {
        "out_dir": str(out_dir),
        "n_customers": n_customers,
        "n_events": n_events,
        "events_per_customer": n_events / n_customers,
        "target_events_per_customer": float(events_per_customer),
        "max_events_per_customer": max_events,
        "event_counts": {name: int(count) for name, count in zip(EVENT_TYPES, type_counts)},
        "customers_churned_in_window": n_churned,
        "start": start_ts.isoformat(),
        "end": (start_ts + pd.Timedelta(days=days)).isoformat(),
        "days": days,
        "seed": seed,
        "n_partitions": n_partitions,
        "n_files": n_files,
        "rows_per_file": rows_per_file,
    }
    # The file leaves out the output path, so that a moved or copied dataset stays byte-identical.
    on_disk = {key: value for key, value in summary.items() if key != "out_dir"}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(on_disk, indent=2) + "\n")
    summary["seconds"] = round(time.perf_counter() - began, 2)
    log.info("Wrote %d events of %d customers to %s in %.1f s", n_events, n_customers, out_dir, summary["seconds"])
    return summary


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the generator's options to ``parser`` (or a new one) and return it."""
    parser = parser or argparse.ArgumentParser(prog="seqchurn synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory of the Parquet dataset")
    parser.add_argument("--customers", required=True, type=int, help="number of customers")
    parser.add_argument("--events-per-customer", type=float, default=50.0, help="target mean number of events per customer (default: 50)")
    parser.add_argument("--days", type=int, default=730, help="length of the window in days (default: 730)")
    parser.add_argument("--start", default="2022-01-01", help="first day of the window, UTC (default: 2022-01-01)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--partitions", type=int, default=None, help="number of customer buckets (default: one per about 1 M events)")
    parser.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE, help=f"row limit of one Parquet file (default: {DEFAULT_ROWS_PER_FILE})")
    parser.add_argument(
        "--chunk-customers", type=int, default=DEFAULT_CHUNK_CUSTOMERS,
        help=f"customers generated at once; bounds memory, not the output (default: {DEFAULT_CHUNK_CUSTOMERS})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the generator from the command line and print its summary as JSON; return the exit code."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = generate(
            args.out,
            args.customers,
            events_per_customer=args.events_per_customer,
            start=args.start,
            days=args.days,
            seed=args.seed,
            n_partitions=args.partitions,
            rows_per_file=args.rows_per_file,
            chunk_customers=args.chunk_customers,
            overwrite=args.overwrite,
        )
    except ValueError as err:
        print(f"seqchurn synth: error: {err}")
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
