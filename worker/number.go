package worker

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrOverflow marks an integer sum that left the int64 range, or an integer
// input outside it. The event that caused it is skipped (the error also
// wraps ErrBadEvent), so the sum stays the exact sum of the events before it.
var ErrOverflow = errors.New("worker: integer sum overflows int64")

// num is an exact sum's value: an int64 while every input was an integer
// literal (no fraction, no exponent), a float64 once any was not.
type num struct {
	isFloat bool
	i       int64
	f       float64
}

// parseNum parses a JSON number literal (as the sum state stores it and as
// events carry it). An integer literal outside int64 is an ErrOverflow.
func parseNum(s string) (num, error) {
	if s != "" && !strings.ContainsAny(s, ".eE") {
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return num{}, fmt.Errorf("%w: %s is outside int64", ErrOverflow, s)
			}
			return num{}, err
		}
		return num{i: i}, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return num{}, err
	}
	return num{isFloat: true, f: f}, nil
}

func (n num) float() float64 {
	if n.isFloat {
		return n.f
	}
	return float64(n.i)
}

// add returns n+x: exact for two integers (ErrOverflow outside int64), a
// float64 sum otherwise.
func (n num) add(x num) (num, error) {
	if !n.isFloat && !x.isFloat {
		s := n.i + x.i
		if (x.i > 0 && s < n.i) || (x.i < 0 && s > n.i) {
			return num{}, fmt.Errorf("%w: %d + %d", ErrOverflow, n.i, x.i)
		}
		return num{i: s}, nil
	}
	s := n.float() + x.float()
	if math.IsInf(s, 0) || math.IsNaN(s) {
		return num{}, fmt.Errorf("%w: %g + %g is not a finite float64", ErrOverflow, n.float(), x.float())
	}
	return num{isFloat: true, f: s}, nil
}

// appendJSON appends n as a JSON number. A float is always written with a
// fraction or an exponent, so that parseNum reads it back as a float: a
// float sum never turns back into an integer one.
func (n num) appendJSON(dst []byte) []byte {
	if !n.isFloat {
		return strconv.AppendInt(dst, n.i, 10)
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, n.f, 'g', -1, 64)
	for _, c := range dst[start:] {
		if c == '.' || c == 'e' || c == 'E' {
			return dst
		}
	}
	return append(dst, '.', '0')
}
