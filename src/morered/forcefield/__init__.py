"""Machine-learned force fields: GFN2-xTB labels, a PaiNN energy model, DeNS, an ASE calculator."""
