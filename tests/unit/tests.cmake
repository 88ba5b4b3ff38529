fm_unit_test(identity)
