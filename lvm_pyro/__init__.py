from lvm_pyro.data import validate_data
