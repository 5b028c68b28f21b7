//! The optimal streaming piecewise-linear approximation (PLA) that every level of the index is
//! made of: points `(x, y)` with strictly increasing `x` and `y` go in one at a time; out come
//! segments such that every point's `y` is within `fit_epsilon` of its segment's line, with the
//! fewest segments any such approximation can have.
//!
//! The algorithm is O'Rourke's, in the form the PGM-index uses (Ferragina & Vinciguerra,
//! "The PGM-index", VLDB 2020, `OptimalPiecewiseLinearModel`): it keeps the convex hulls of the
//! upper (`y + ε`) and lower (`y − ε`) points of the open segment and the two extreme feasible
//! lines through them (`rectangle`). A point that no feasible line can reach closes the segment.
//! Each point is added in amortized O(1), so a level is built in one pass in O(n).
//!
//! All geometry is exact integer arithmetic in `i128` (x < 2^64, y < 2^31, so every cross
//! product fits below 2^100). Only the final line is rounded, to a 16-byte [`Segment`]; the
//! caller fits with one rank less than the error bound it promises, which covers that rounding
//! (see [`Pla::segment`]). Pure; no I/O.

/// A point of the plane; `y` is already shifted by ±ε for hull points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Point {
    x: i128,
    y: i128,
}

/// The slope between two points as an exact fraction; `dx` is never zero where slopes are compared.
#[derive(Clone, Copy, Debug)]
struct Slope {
    dx: i128,
    dy: i128,
}

impl Slope {
    /// `self < other` for two slopes whose `dx` have the same sign.
    fn lt(self, other: Slope) -> bool {
        self.dy * other.dx < self.dx * other.dy
    }

    /// `self > other` for two slopes whose `dx` have the same sign.
    fn gt(self, other: Slope) -> bool {
        self.dy * other.dx > self.dx * other.dy
    }
}

fn slope(to: Point, from: Point) -> Slope {
    Slope {
        dx: to.x - from.x,
        dy: to.y - from.y,
    }
}

/// Cross product of `OA × OB`: positive when `O → A → B` turns counter-clockwise.
fn cross(o: Point, a: Point, b: Point) -> i128 {
    let oa = slope(a, o);
    let ob = slope(b, o);
    oa.dx * ob.dy - oa.dy * ob.dx
}

/// One closed segment: `y ≈ intercept + slope · (x − first_x)` for `x ≥ first_x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Segment {
    pub first_x: u64,
    pub slope: f32,
    pub intercept: i32,
}

/// Most positions one segment spans (`y` of its last point − `y` of its first). It bounds the
/// error of the `f32` slope: `slope · (x − first_x)` stays below 2^22 + 2ε ≤ 2^22 + 2^20, so
/// the slope's relative rounding error of 2^-24 moves a prediction by at most 0.32 positions.
/// A longer straight run costs one more segment per 4M positions.
pub(crate) const SEGMENT_SPAN_MAX: u64 = 1 << 22;

/// The open segment of a streaming PLA; feed it with [`Pla::add`] and close it with
/// [`Pla::segment`] when `add` refuses a point.
#[derive(Debug)]
pub(crate) struct Pla {
    fit_epsilon: i128,
    lower: Vec<Point>,
    upper: Vec<Point>,
    lower_start: usize,
    upper_start: usize,
    points_in_hull: usize,
    rectangle: [Point; 4],
    first_x: u64,
    first_y: u64,
    last_x: u64,
}

/// Hull prefixes that no later point can use are dropped once they are this long, so the memory
/// of one open segment stays proportional to its live hull, not to its number of points.
const HULL_DRAIN_MIN_POINTS: usize = 1024;

impl Pla {
    pub fn new(fit_epsilon: u64) -> Self {
        Self {
            fit_epsilon: i128::from(fit_epsilon),
            lower: Vec::new(),
            upper: Vec::new(),
            lower_start: 0,
            upper_start: 0,
            points_in_hull: 0,
            rectangle: [Point::default(); 4],
            first_x: 0,
            first_y: 0,
            last_x: 0,
        }
    }

    /// Adds a point to the open segment. Returns false, and leaves the segment unchanged, when
    /// no line within `fit_epsilon` of every point so far can also reach this one: the caller
    /// then closes the segment with [`Pla::segment`] and adds the point again, which starts a new
    /// segment. `x` must be greater than the previous point's `x` (checked by the caller).
    pub fn add(&mut self, x: u64, y: u64) -> bool {
        debug_assert!(
            self.points_in_hull == 0 || x > self.last_x,
            "x must increase"
        );
        if self.points_in_hull > 0 && y.saturating_sub(self.first_y) > SEGMENT_SPAN_MAX {
            return false;
        }
        let p1 = Point {
            x: i128::from(x),
            y: i128::from(y) + self.fit_epsilon,
        };
        let p2 = Point {
            x: i128::from(x),
            y: i128::from(y) - self.fit_epsilon,
        };

        if self.points_in_hull == 0 {
            self.first_x = x;
            self.first_y = y;
            self.last_x = x;
            self.rectangle[0] = p1;
            self.rectangle[1] = p2;
            self.upper.clear();
            self.lower.clear();
            self.upper.push(p1);
            self.lower.push(p2);
            self.upper_start = 0;
            self.lower_start = 0;
            self.points_in_hull = 1;
            return true;
        }
        if self.points_in_hull == 1 {
            self.last_x = x;
            self.rectangle[2] = p2;
            self.rectangle[3] = p1;
            self.upper.push(p1);
            self.lower.push(p2);
            self.points_in_hull = 2;
            return true;
        }

        // rectangle[0] → rectangle[2] is the least steep feasible line, rectangle[1] →
        // rectangle[3] the steepest; a point above the one or below the other is unreachable.
        let slope_min = slope(self.rectangle[2], self.rectangle[0]);
        let slope_max = slope(self.rectangle[3], self.rectangle[1]);
        let outside_min = slope(p1, self.rectangle[2]).lt(slope_min);
        let outside_max = slope(p2, self.rectangle[3]).gt(slope_max);
        if outside_min || outside_max {
            return false;
        }
        self.last_x = x;

        if slope(p1, self.rectangle[1]).lt(slope_max) {
            // The steepest line now ends at p1: find its new start on the lower hull.
            let mut min = slope(self.lower[self.lower_start], p1);
            let mut min_i = self.lower_start;
            for i in self.lower_start + 1..self.lower.len() {
                let candidate = slope(self.lower[i], p1);
                if candidate.gt(min) {
                    break;
                }
                min = candidate;
                min_i = i;
            }
            self.rectangle[1] = self.lower[min_i];
            self.rectangle[3] = p1;
            self.lower_start = min_i;

            let mut end = self.upper.len();
            while end >= self.upper_start + 2
                && cross(self.upper[end - 2], self.upper[end - 1], p1) <= 0
            {
                end -= 1;
            }
            self.upper.truncate(end);
            self.upper.push(p1);
        }

        if slope(p2, self.rectangle[0]).gt(slope_min) {
            // The least steep line now ends at p2: find its new start on the upper hull.
            let mut max = slope(self.upper[self.upper_start], p2);
            let mut max_i = self.upper_start;
            for i in self.upper_start + 1..self.upper.len() {
                let candidate = slope(self.upper[i], p2);
                if candidate.lt(max) {
                    break;
                }
                max = candidate;
                max_i = i;
            }
            self.rectangle[0] = self.upper[max_i];
            self.rectangle[2] = p2;
            self.upper_start = max_i;

            let mut end = self.lower.len();
            while end >= self.lower_start + 2
                && cross(self.lower[end - 2], self.lower[end - 1], p2) >= 0
            {
                end -= 1;
            }
            self.lower.truncate(end);
            self.lower.push(p2);
        }

        self.points_in_hull += 1;
        self.drain_dead_hull_prefixes();
        true
    }

    /// Hull points before `*_start` are never looked at again (the extreme lines only move
    /// forward along the hulls); dropping them keeps memory bounded on very long segments.
    fn drain_dead_hull_prefixes(&mut self) {
        if self.lower_start >= HULL_DRAIN_MIN_POINTS && self.lower_start * 2 >= self.lower.len() {
            self.lower.drain(..self.lower_start);
            self.lower_start = 0;
        }
        if self.upper_start >= HULL_DRAIN_MIN_POINTS && self.upper_start * 2 >= self.upper.len() {
            self.upper.drain(..self.upper_start);
            self.upper_start = 0;
        }
    }

    /// Closes the open segment and returns its line. The line is the steepest feasible one
    /// (through `rectangle[1]` and `rectangle[3]`), which is exactly within `fit_epsilon` of
    /// every point. Stored, its intercept is rounded to an integer (≤ 0.5 positions off) and
    /// its slope to `f32` (≤ 0.32 positions off within `SEGMENT_SPAN_MAX`); a prediction is
    /// then rounded to an integer (≤ 0.5). The sum is below `fit_epsilon + 1.5`, and since a
    /// rounded prediction and a position are integers, their distance is ≤ `fit_epsilon + 1`.
    pub fn segment(&mut self) -> Option<Segment> {
        let segment = match self.points_in_hull {
            0 => return None,
            1 => Segment {
                first_x: self.first_x,
                slope: 0.0,
                intercept: to_i32((self.rectangle[0].y + self.rectangle[1].y) / 2),
            },
            _ => {
                let from = self.rectangle[1];
                let to = self.rectangle[3];
                let line = slope(to, from);
                debug_assert!(line.dx > 0 && line.dy > 0, "the steepest line rises");
                // intercept = from.y + dy · (first_x − from.x) / dx, rounded to the nearest
                // integer (first_x ≤ from.x, so the fraction is ≤ 0).
                let numerator = line.dy * (i128::from(self.first_x) - from.x);
                let rounded = (2 * numerator + line.dx).div_euclid(2 * line.dx);
                Segment {
                    first_x: self.first_x,
                    slope: (line.dy as f64 / line.dx as f64) as f32,
                    intercept: to_i32(from.y + rounded),
                }
            }
        };
        self.points_in_hull = 0;
        Some(segment)
    }
}

/// Intercepts lie within ε of a position below 2^30 (`KEYS_MAX`), so they fit an `i32`; the
/// clamp is never reached, and the build's check would catch it if it were.
fn to_i32(value: i128) -> i32 {
    debug_assert!(i32::try_from(value).is_ok(), "intercept {value}");
    value.clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32
}

/// Fits `points` (strictly increasing in both coordinates) into segments, one pass.
pub(crate) fn fit(points: impl IntoIterator<Item = (u64, u64)>, fit_epsilon: u64) -> Vec<Segment> {
    let mut pla = Pla::new(fit_epsilon);
    let mut segments = Vec::new();
    for (x, y) in points {
        if !pla.add(x, y) {
            segments.extend(pla.segment());
            let started = pla.add(x, y);
            debug_assert!(started, "a point always starts a segment");
        }
    }
    segments.extend(pla.segment());
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predict(segment: &Segment, x: u64) -> f64 {
        (f64::from(segment.intercept) + f64::from(segment.slope) * (x - segment.first_x) as f64)
            .round()
    }

    /// Checks the error bound of every point against the segment that covers it.
    fn max_error(points: &[(u64, u64)], segments: &[Segment]) -> f64 {
        let mut worst = 0.0f64;
        for &(x, y) in points {
            let index = segments.partition_point(|s| s.first_x <= x) - 1;
            worst = worst.max((predict(&segments[index], x) - y as f64).abs());
        }
        worst
    }

    #[test]
    fn a_line_is_one_segment() {
        let points: Vec<(u64, u64)> = (0..10_000u64).map(|i| (i * 7 + 3, i)).collect();
        let segments = fit(points.iter().copied(), 1);
        assert_eq!(segments.len(), 1);
        assert!(max_error(&points, &segments) <= 2.0);
    }

    #[test]
    fn every_point_is_within_the_bound() {
        // A bumpy, convex-then-concave curve with jumps, which closes many segments.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut x = 0u64;
        let mut points = Vec::new();
        for y in 0..50_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            x += 1 + state % (if (y / 1000) % 2 == 0 { 10 } else { 100_000 });
            points.push((x, y));
        }
        for fit_epsilon in [0u64, 1, 3, 64] {
            let segments = fit(points.iter().copied(), fit_epsilon);
            assert!(max_error(&points, &segments) <= fit_epsilon as f64 + 1.0);
            assert!(segments.windows(2).all(|w| w[0].first_x < w[1].first_x));
        }
    }

    #[test]
    fn long_segments_are_split() {
        let points: Vec<(u64, u64)> = (0..10_000u64).map(|i| (i, i * 1_000)).collect();
        let segments = fit(points.iter().copied(), 3);
        assert_eq!(segments.len(), 3);
        assert!(max_error(&points, &segments) <= 4.0);
    }

    #[test]
    fn extreme_coordinates() {
        let points = [
            (0u64, 0u64),
            (1, 1),
            (u64::MAX / 2, 2),
            (u64::MAX - 1, 3),
            (u64::MAX, 4),
        ];
        for fit_epsilon in [0u64, 1, 2] {
            let segments = fit(points.iter().copied(), fit_epsilon);
            assert!(max_error(&points, &segments) <= fit_epsilon as f64 + 1.0);
        }
        assert_eq!(fit(std::iter::empty(), 3), Vec::new());
    }
}
