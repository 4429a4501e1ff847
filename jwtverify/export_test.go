package jwtverify

// AddFuzzSeeds lets the external tests (package jwtverify_test) seed their
// fuzz targets as FuzzVerifySignature does.
var AddFuzzSeeds = addFuzzSeeds
