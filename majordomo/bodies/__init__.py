"""
Full request and response bodies, kept where C{logging.body_storage} says
(L{majordomo.bodies.store}): the request's document (L{majordomo.bodies.document}),
its upload to S3 (L{majordomo.bodies.s3}) and the bodies waiting on disk for S3
(L{majordomo.bodies.parking}).
"""
