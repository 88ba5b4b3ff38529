fm_unit_test(identity)
fm_unit_test(crdt)
