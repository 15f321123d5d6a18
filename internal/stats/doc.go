// Package stats declares counters once, in a table, and derives from the
// table what every reader of them needs: the name=value text vmnet-helper
// prints, a JSON object, and the name, help and kind a metrics collector
// exports.
//
// A package that counts owns its table and its storage: constants that
// index the table, and an array of atomics indexed by them, so that adding
// costs one atomic and never an allocation. stats owns the rules a table
// follows (Table.Check) and the formats; it keeps no state, opens no files
// and imports only the standard library.
package stats
