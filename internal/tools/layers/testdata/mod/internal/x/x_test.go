package x

import (
	"testing"

	_ "example.com/m/integration/h"
)

func TestX(t *testing.T) {}
