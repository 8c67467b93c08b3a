package hardware_test

import (
	"fmt"
	"log"

	"github.com/loki-iot/loki/hardware"
)

// A board runs from its config: open its backend, then drive it through a
// Device.
func Example() {
	cfg := hardware.SimBoardConfig()
	board, err := hardware.OpenBoard(cfg)
	if err != nil {
		log.Fatal(err)
	}
	d, err := hardware.NewDevice(cfg, board)
	if err != nil {
		_ = board.Close()
		log.Fatal(err)
	}
	defer func() { _ = d.Close() }()

	st, err := d.SetActuator("led", "on")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Name, st.On, st.Level)
	// Output: led true 1
}
